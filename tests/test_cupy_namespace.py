"""Static checks that tinytok stays inside the API NumPy and CuPy share (no GPU needed).

CuPy installs and imports on a machine without a GPU, so its namespace can be compared with
what the package uses:

(a) every attribute the package takes from an array module (``xp.exp``, ``xp.add.reduceat``,
    ``backend.xp().float32``, ``get_array_module(x).argmin``, ``cupy.cuda.Device``) exists
    in the real ``cupy`` module;
(b) every array method or attribute used in the device-side modules that NumPy arrays have
    (``.astype``, ``.ravel``, ``.item`` ...) also exists on ``cupy.ndarray``;
(c) NumPy is called directly only at documented host edges (HOST_EDGES below), and the
    package never imports CuPy (or cupyx) outside backend.py, nor uses CuPy-only names.

The scan reads the source with ``ast``; nothing of tinytok is executed.
"""
import ast
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tinytok"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def module_name(path):
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


# Modules whose arrays may live on the GPU: every op, model and training module, and these.
# The others (prior.vocab, data.*, evaluate.*, viz, cli, demo, errors, files) work on host
# data by design and convert with to_numpy where they take arrays.
DEVICE_PACKAGES = ("ops.", "tokenizer.", "prior.", "training.")
HOST_MODULES = {"prior.vocab", "prior.layouts", "training.conversations",
                "training.prior_batches", "training.progress",
                "ops", "tokenizer", "prior", "training"}
DEVICE_MODULES = ({"backend", "bench.measure", "bench.workloads", "bench.sections",
                   "gradcheck", "parallel", "pipeline"}
                  | {module_name(path) for path in SOURCES
                     if module_name(path).startswith(DEVICE_PACKAGES)}) - HOST_MODULES

# Names that hold an array module: by convention, or bound from one of these calls.
MODULE_NAMES = {"xp", "cupy", "cp"}
MODULE_CALLS = {"get_array_module", "xp", "use", "_load_cupy"}


def real_cupy():
    """The installed CuPy module (also when tests/fake_cupy.py stands in for it)."""
    cupy = pytest.importorskip("cupy")
    if getattr(cupy, "__fake__", False):
        import fake_cupy
        if fake_cupy.REAL is None:
            pytest.skip("CuPy is not installed")
        cupy = fake_cupy.REAL
    return cupy


def parse(path):
    """The module's syntax tree, each node knowing its parent (node._parent)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child._parent = node
    return tree


def _is_module_call(node):
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return name in MODULE_CALLS


def _is_module_value(node):
    """x = get_array_module(...) / backend.xp() / (np if ... else _load_cupy())."""
    if isinstance(node, ast.IfExp):
        return any(_is_module_value(n) or (isinstance(n, ast.Name) and n.id == "np")
                   for n in (node.body, node.orelse)) and \
            any(_is_module_value(n) for n in (node.body, node.orelse))
    return _is_module_call(node)


def _module_names(tree):
    names = set(MODULE_NAMES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_module_value(node.value):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _chain(node):
    """Attribute(Attribute(base, a), b) -> (base, ["a", "b"])."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return node, attrs[::-1]


def array_module_uses():
    """[(where, ("add", "reduceat"))] for every attribute chain taken from an array module."""
    uses = []
    for path in SOURCES:
        tree = parse(path)
        names = _module_names(tree)
        for node in ast.walk(tree):
            # only the outermost attribute of a chain (xp.add.reduceat, not also xp.add)
            if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "_parent", None),
                                                                 ast.Attribute):
                continue
            base, attrs = _chain(node)
            if (isinstance(base, ast.Name) and base.id in names) or _is_module_call(base):
                uses.append((f"{path.relative_to(ROOT)}:{node.lineno}", tuple(attrs)))
    return uses


# ---------------------------------------------------------------- (a) the cupy namespace

def test_the_scan_finds_array_module_uses():
    uses = {attrs for _, attrs in array_module_uses()}
    # a few that must be seen, or the scanner has gone blind
    for expected in [("zeros",), ("add", "reduceat"), ("argmin",), ("asarray",), ("float32",)]:
        assert expected in uses, f"the scan did not find xp.{'.'.join(expected)}"


def missing_names(module, uses):
    """For each (where, attribute chain) the module lacks: "where: xp.chain-up-to-the-gap"."""
    missing = []
    for where, attrs in uses:
        obj = module
        for i, attr in enumerate(attrs):
            if not hasattr(obj, attr):
                missing.append(f"{where}: xp.{'.'.join(attrs[:i + 1])}")
                break
            obj = getattr(obj, attr)
    return missing


def test_every_array_module_attribute_exists_in_cupy():
    cupy = real_cupy()
    missing = missing_names(cupy, array_module_uses())
    assert not missing, ("tinytok uses names that CuPy does not have "
                         f"(CuPy {cupy.__version__}):\n" + "\n".join(missing))


def test_array_module_attributes_exist_in_numpy_too():
    """The same names on NumPy, except CuPy-only ones used under an `is cupy` guard."""
    cupy_only = {"cuda", "get_default_memory_pool", "get_default_pinned_memory_pool",
                 "ndarray", "random", "is_available", "asnumpy"}
    missing = missing_names(np, [(where, attrs) for where, attrs in array_module_uses()
                                 if attrs[0] not in cupy_only and not attrs[0].startswith("__")])
    assert not missing, "names NumPy does not have:\n" + "\n".join(missing)


# ---------------------------------------------------------------- (b) ndarray attributes

def ndarray_attribute_uses():
    """[(where, attr)] of .attr uses in device modules that are NumPy ndarray attributes."""
    public = {n for n in dir(np.ndarray) if not n.startswith("_")}
    uses = []
    for path in SOURCES:
        if module_name(path) not in DEVICE_MODULES:
            continue
        tree = parse(path)
        imported = {alias.asname or alias.name.split(".")[0]
                    for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in public:
                if isinstance(node.value, ast.Name) and node.value.id in imported:
                    continue  # backend.to_device, np.sort: a module's function, not a method
                uses.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.attr))
    return uses


def test_every_ndarray_attribute_used_exists_on_cupy_ndarray():
    cupy = real_cupy()
    uses = ndarray_attribute_uses()
    assert {"astype", "reshape", "transpose", "sum"} <= {a for _, a in uses}
    missing = [f"{where}: .{attr}" for where, attr in uses if not hasattr(cupy.ndarray, attr)]
    assert not missing, ("array attributes that cupy.ndarray does not have:\n"
                         + "\n".join(missing))


# ---------------------------------------------------------------- (c) host edges

# np.<name> may appear anywhere: dtypes, scalar types and classes used in isinstance checks,
# and the host random generator (draws are made on the host, then moved: backend.py).
NUMPY_TYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
               "bool_", "integer", "floating", "generic", "ndarray", "dtype", "random",
               "__version__", "newaxis", "inf", "nan", "pi", "e"}

# (module, function) -> the NumPy functions it may call, and why that is a host edge.
HOST_EDGES = {
    ("backend", "to_numpy"): ({"asarray"}, "the host conversion itself"),
    ("backend", "to_device"): ({"asarray"}, "the NumPy backend's upload is a no-op asarray"),
    ("tokenizer.codebook", "usage_stats"): ({"exp", "log"}, "works on to_numpy(counts)"),
    ("tokenizer.codebook", "restart_dead_codes"): ({"flatnonzero"}, "on to_numpy(counts)"),
    ("tokenizer.codebook", "kmeans_plus_plus"): ({"empty", "minimum"},
                                       "k-means runs on the host (kmeans_init calls to_numpy)"),
    ("tokenizer.gumbel", "gumbel_noise"): ({"log"}, "noise is drawn on the host, then moved"),
    ("tokenizer.vqvae", "conv_params"): ({"sqrt"}, "a Python float bound for host init draws"),
    ("tokenizer.quantizers", "linear_params"): ({"sqrt"}, "a Python float bound, host init"),
    ("tokenizer.quantizers", "unit_rows"): ({"linalg"}, "host init draws, moved by to_device"),
    ("ops.resample", "area_matrix"): ({"arange"}, "the 1-D weights, built on the host, moved"),
    ("ops.resample", "bilinear_matrix"): ({"arange", "floor", "intp", "maximum", "minimum",
                                           "zeros"}, "the 1-D weights, built on the host, moved"),
    ("ops.losses", "radial_frequency"): ({"fft", "hypot"}, "frequencies of a DFT's grid, host"),
    ("ops.losses", "frequency_rings"): ({"int64", "rint"}, "host band numbers"),
    ("ops.losses", "band_membership"): ({"arange", "zeros"},
                                        "the one-hot matrix, built on the host, moved"),
    ("prior.gpt", "init_gpt_params"): ({"ones", "sqrt", "zeros"}, "host init, moved by to_device"),
    ("pipeline", "model_to_images"): ({"clip", "rint"}, "after to_numpy: uint8 images out"),
    ("evaluate", "psnr"): ({"log10", "maximum"}, "uint8 host images"),
    ("pipeline", "Tokenizer.encode"): ({"concatenate"}, "of host ids (_encode_batch)"),
    ("pipeline", "Tokenizer._encode_batch"): ({"concatenate"},
                                              "of host ids (to_numpy of each part's)"),
    ("pipeline", "Tokenizer.check_ids"): ({"asarray"}, "after to_numpy"),
    ("pipeline", "Tokenizer.decode"): ({"concatenate"}, "of host images (_decode_batch)"),
    ("pipeline", "Tokenizer._decode_batch"): ({"concatenate"},
                                              "of host images (model_to_images)"),
    ("pipeline", "Tokenizer.code_tiles"): ({"arange", "repeat"}, "host ids for decode"),
    ("pipeline", "Pipeline.generate"): ({"concatenate"}, "host codes"),
    ("pipeline", "Pipeline.best_of"): ({"arange"}, "host codes and scores"),
    ("pipeline", "Pipeline.caption_log_likelihood"): ({"concatenate"},
                                                      "host scores of the batch parts"),
    ("prior.sample", "continue_sequences"): ({"asarray", "isin", "stack", "where", "zeros"},
                                             "host prompts (uploaded by step), host tokens"),
    ("prior.sample", "draw_picture"): ({"tile"}, "host prompt ids"),
    ("evaluate", "edit_figures"): ({"mean"}, "host booleans read from uint8 pictures"),
    ("training.prior_trainer", "cut_padding"): ({"flatnonzero"}, "the host batch, before upload"),
    ("training.prior_trainer", "warm_start"): ({"array"}, "host row ids into to_numpy tables"),
    ("prior.sample", "sample_image_codes"): ({"tile"}, "host prompt ids"),
    ("prior.sample", "write_captions"): ({"stack"}, "host prompts from to_numpy(codes)"),
    ("prior.sample", "caption_log_likelihood"): ({"stack", "concatenate"},
                                                 "host token lists; scores after to_numpy"),
    ("training.loop", "host_copy"): ({"array"}, "copies backend.to_numpy(x): a host snapshot"),
    ("evaluate", "eval_tokenizer"): ({"median"}, "of host PSNR figures"),
    ("evaluate", "round_channels"): ({"rint", "uint8"}, "host uint8 images"),
    ("evaluate", "adherence"): ({"repeat"}, "host labels"),
    ("evaluate", "caption_accuracy"): ({"mean"}, "of Python bools"),
    ("gradcheck", "relative_error"): ({"abs", "max"}, "after to_numpy"),
    ("gradcheck", "numerical_gradient"): ({"empty", "unravel_index"},
                                          "host slopes; an index from Python ints"),
    ("gradcheck", "_sample_indices"): ({"arange", "sort"}, "host index lists"),
    ("training.checkpoint", "save_checkpoint"): ({"frombuffer"}, "JSON bytes"),
    ("training.checkpoint", "write_npz_atomic"): ({"savez"}, "arrays already on the host"),
    ("training.checkpoint", "read_npz_safely"): ({"load"}, "reads host arrays"),
    ("training.prior_data", "shapes_prior_data"): ({"asarray"}, "host token ids"),
    ("training.prior_data", "encode_dataset_tokens"): ({"concatenate"}, "host ids from encode"),
    ("training.prior_data", "save_token_cache"): ({"asarray", "frombuffer"}, "host data"),
    ("pipeline", "Pipeline.inpaint"): ({"broadcast_to", "repeat"}, "host ids from encode"),
    ("pipeline", "region_cells"): ({"ndim", "zeros"}, "a host pixel mask from the user's box"),
    ("prior.masked", "choice_noise"): ({"clip", "log"}, "Gumbel noise drawn on the host"),
    ("prior.masked", "cosine_schedule"): ({"asarray", "cos"}, "host shares of host counts"),
    ("prior.masked", "draw_all"): ({"log"}, "after to_numpy: host log-probabilities"),
    ("prior.masked", "fill_in"): ({"array", "concatenate", "where"},
                                  "host grids and prefixes; image_logits uploads the rows"),
    ("prior.masked", "inpaint_codes"): ({"asarray", "where"}, "host codes"),
    ("prior.masked", "fill_in_caption"): ({"tile"}, "host prompt ids"),
    ("prior.masked", "lowest"): ({"argsort", "asarray", "maximum", "minimum"},
                                 "host confidences (draw_all's)"),
    ("prior.masked", "masked_batch"): ({"asarray", "ceil", "concatenate", "full", "maximum",
                                        "stack", "where"}, "the host batch, before upload"),
    ("prior.masked", "masked_prefix"): ({"full"}, "host prompt ids"),
    ("prior.masked", "random_subset"): ({"argsort", "asarray"}, "host draws for the batch"),
    ("prior.masked", "sample_masked_codes"): ({"full"}, "a host grid of unknowns"),
    ("prior.scales", "map_levels"): ({"arange", "repeat"}, "host layout, moved by the caller"),
    ("prior.scales", "block_causal_mask"): ({"concatenate", "full"},
                                            "the host layout, moved as xp.asarray"),
    ("prior.scales", "check_pairing"): ({"array_equal"}, "after to_numpy of both quantizers"),
    ("prior.scales", "init_scales_params"): ({"zeros"}, "host init, moved by to_device"),
    ("prior.scales", "scales_batch"): ({"asarray", "concatenate", "full", "stack"},
                                       "the host batch, before upload"),
    ("prior.scales", "write_maps"): ({"concatenate"}, "host prompt ids, moved as xp.asarray"),
    ("prior.scales", "sample_scale_codes"): ({"tile"}, "host prompt ids"),
}


def numpy_calls_in_device_modules():
    """{(module, function): {np names}} for the device-side modules."""
    found = {}
    for path in SOURCES:
        mod = module_name(path)
        if mod not in DEVICE_MODULES:
            continue

        def visit(node, func):
            for child in ast.iter_child_nodes(node):
                f = func
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    f = child.name if func is None else f"{func}.{child.name}"
                if (isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name)
                        and child.value.id == "np" and child.attr not in NUMPY_TYPES):
                    found.setdefault((mod, f or "<module>"), {})[child.attr] = child.lineno
                visit(child, f)
        visit(parse(path), None)
    return found


def test_numpy_is_called_only_at_documented_host_edges():
    unexplained = []
    for (mod, func), names in sorted(numpy_calls_in_device_modules().items()):
        allowed = HOST_EDGES.get((mod, func), (set(), ""))[0]
        for name, line in sorted(names.items()):
            if name not in allowed:
                unexplained.append(f"tinytok/{mod.replace('.', '/')}.py:{line} in {func}: "
                                   f"np.{name}")
    assert not unexplained, (
        "NumPy called in device-side code outside the documented host edges. On CuPy a NumPy "
        "function on a device array either fails (implicit conversion) or silently runs a "
        "different code path. Use the array module (xp = get_array_module(x)), or, if the "
        "data is on the host by then (after to_numpy), add the function to HOST_EDGES in "
        "tests/test_cupy_namespace.py with the reason:\n" + "\n".join(unexplained))


def test_cupy_is_imported_only_by_backend():
    offenders = []
    for path in SOURCES:
        for node in ast.walk(parse(path)):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            if any(m.split(".")[0] in ("cupy", "cupyx") for m in mods) and \
                    module_name(path) != "backend":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "import cupy outside tinytok/backend.py: " + ", ".join(offenders)


def test_no_cupy_only_array_methods():
    """CuPy-only spellings (old scatter_add, .get() on arrays, toDlpack) would break NumPy."""
    cupy = real_cupy()
    cupy_only = {n for n in dir(cupy.ndarray) if not n.startswith("_")} - set(dir(np.ndarray))
    cupy_only.discard("get")  # dict.get is everywhere; backend.to_numpy is the one .get() user
    uses = []
    for path in SOURCES:
        if module_name(path) == "backend":
            continue
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Attribute) and node.attr in cupy_only:
                uses.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not uses, "CuPy-only array methods (NumPy arrays lack them):\n" + "\n".join(uses)


def test_fake_cupy_exposes_only_real_names():
    cupy = real_cupy()
    import fake_cupy
    assert all(hasattr(cupy, n) for n in fake_cupy.cupy.EXPOSED)
    assert all(hasattr(cupy.random, n) for n in dir(fake_cupy.cupy.random)
               if not n.startswith("_"))


if __name__ == "__main__":  # a quick listing: python tests/test_cupy_namespace.py
    for where, attrs in array_module_uses():
        print(where, "xp." + ".".join(attrs))
    sys.exit(0)
