"""Data: captioned shapes and their attribute reader, photographs, faces, digits, folders."""
