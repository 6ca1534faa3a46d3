"""`neurograph export hf`: a trained run as a self-contained Hugging Face folder.

The folder holds config.json (with `auto_map`), the wrappers model/configuration_neurograph.py and
model/modeling_neurograph.py with the family and kernel modules they import, all flat in one folder
(they import torch and each other as siblings, the layout transformers' dynamic-module loader
expects: the kernel folders kernels/<op>/ are flattened, `shipped_name`, and only the relative
imports are renamed to match), safetensors weights (sharded with an index above `max_shard_size`),
generation_config.json and the tokenizer. It loads with
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` where only torch,
transformers and safetensors are installed.
"""
from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Optional

from ..config import ConfigError

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR, KERNELS_DIR = REPO / "model", REPO / "kernels"
TEMPLATES = ("configuration_neurograph.py", "modeling_neurograph.py")
# What the shipped files may import unconditionally: the standard library and these.
ALLOWED_PACKAGES = frozenset({"torch", "transformers", "safetensors", "numpy"}) | frozenset(sys.stdlib_module_names)


def shipped_name(path: Path) -> str:
    """The flat module name a project file ships as: model/x.py and kernels/x.py as `x`, an op's
    kernels/<op>/__init__.py (its dispatch) as `<op>`, the op's other modules kernels/<op>/m.py as `<op>_m`."""
    rel = path.relative_to(REPO)
    if rel.parts[0] == "kernels" and len(rel.parts) == 3:
        return rel.parts[1] if path.stem == "__init__" else f"{rel.parts[1]}_{path.stem}"
    return path.stem


def _relative_imports(path: Path) -> list[tuple[ast.ImportFrom, Path]]:
    """Each `from .x import` / `from ..x import` of `path` (anywhere in the file, as transformers'
    dynamic-module loader finds them) with the file it names: in its own folder or a folder above,
    for a family file the kernel op model/__init__.py registers as its sibling. Any other project
    import cannot be shipped."""
    from neurograph.model import KERNEL_MODULES

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            where = f"{path.relative_to(REPO)}: `from {'.' * node.level}{node.module or ''} import`"
            if not node.module or "." in node.module:
                raise ConfigError(f"{where} cannot be shipped (import names from a module: `from .module import name`)")
            base = path.parents[node.level - 1]
            if path.parent == MODEL_DIR and node.level == 1 and node.module in KERNEL_MODULES:
                base = KERNELS_DIR
            target = next((f for f in (base / f"{node.module}.py", base / node.module / "__init__.py")
                           if f.is_file() and (f.is_relative_to(MODEL_DIR) or f.is_relative_to(KERNELS_DIR))), None)
            if target is None:
                raise ConfigError(f"{where} names no module of model/ or kernels/, so it cannot be shipped")
            found.append((node, target))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if any(m.split(".")[0] == "neurograph" for m in modules):
                raise ConfigError(f"{path.relative_to(REPO)}: `neurograph` imports cannot be shipped")
    return found


_FROM_RELATIVE = re.compile(r"from\s+\.+[\w.]*\s+import\b")


def _flattened(path: Path, imports: list[tuple[ast.ImportFrom, Path]]) -> bytes:
    """`path`'s source with each relative import renamed to the flat name of the file it names;
    every other byte as it is."""
    lines = path.read_bytes().decode().splitlines(keepends=True)
    for node, target in imports:
        line = lines[node.lineno - 1]
        match = _FROM_RELATIVE.match(line, node.col_offset)
        if match is None:
            raise ConfigError(f"{path.relative_to(REPO)}:{node.lineno}: write `from .x import` on one line to ship it")
        lines[node.lineno - 1] = f"{line[:match.start()]}from .{shipped_name(target)} import{line[match.end():]}"
    return "".join(lines).encode()


def write_model_sources(out: Path) -> list[str]:
    """Write the wrapper templates and every module they import (transitively: family files and the
    kernel modules they call) into `out`, flat, as `shipped_name` names them: the files as they are,
    but for their relative imports, renamed to the flat names. Returns the file names written."""
    pending = [MODEL_DIR / t for t in TEMPLATES]
    written: dict[str, Path] = {}
    while pending:
        path = pending.pop()
        name = f"{shipped_name(path)}.py"
        if name in written:
            if written[name] != path:
                raise ConfigError(f"{path.relative_to(REPO)} and {written[name].relative_to(REPO)} would both "
                                  f"be shipped as {name}")
            continue
        written[name] = path
        imports = _relative_imports(path)
        (out / name).write_bytes(_flattened(path, imports))
        pending += [target for _, target in imports]
    _check_self_contained(out, sorted(written))
    return sorted(written)


def unconditional_imports(source: str) -> set[str]:
    """Top-level packages a module imports whenever it is imported: module and class level,
    outside try and if blocks (those are the module's own guards), not inside functions."""
    found: set[str] = set()

    def visit(body: list) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(ast.parse(source).body)
    return found


def _check_self_contained(out: Path, names: list[str]) -> None:
    for name in names:
        extra = unconditional_imports((out / name).read_text()) - ALLOWED_PACKAGES
        if extra:
            raise ConfigError(f"{name} imports {sorted(extra)} unconditionally; an exported model may need only "
                              f"torch, transformers, safetensors and the standard library")


def _unreadable(path: Path) -> bool:
    """True when a checkpoint file does not open: a safetensors file whose header or data is cut,
    a torch file (a zip archive) that fails its checksums."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                f.keys()
        else:
            with zipfile.ZipFile(path) as z:
                return z.testzip() is not None
        return False
    except Exception:
        return True


def _describe_bad_checkpoint(checkpoint_dir: Path, err: Exception) -> str:
    """Name the unreadable file of a checkpoint that failed to load."""
    for path in sorted([*checkpoint_dir.glob("**/*.safetensors"), *checkpoint_dir.glob("**/*.pt")]):
        if _unreadable(path):
            return f"checkpoint file {path} is truncated or corrupted"
    return f"checkpoint {checkpoint_dir} could not be loaded ({type(err).__name__}: {err})"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {out} is not empty; pass --overwrite to replace its contents")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def export_hf(run_dir: str | Path, out: str | Path, checkpoint: str = "latest", dtype: str = "fp32",
              overwrite: bool = False, chat_template: Optional[str] = None, max_shard_size: str = "5GB") -> Path:
    """Export a run's checkpoint as a Hugging Face folder `out`; returns `out`. The tokenizer's chat
    template is `chat_template` when given, else the run's `export.chat_template`."""
    from neurograph.data_pipeline import load_manifest
    from neurograph.trainer.checkpoint import CheckpointManager

    from ..config import load_config
    from .tokenizer import hf_tokenizer
    from ..inference import load_trained_model

    run_dir, out = Path(run_dir), Path(out)
    if dtype not in ("fp32", "bf16"):
        raise ConfigError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir / 'config.yaml'} not found: --run must be a training run directory")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.model.arch == "hf_inl":
        raise ConfigError("model.arch=hf_inl is a transformers GPT-2/Llama with INL integrators in place of its MLPs; "
                          "exporting it needs that architecture's own modeling file and is not supported")
    try:
        tag = CheckpointManager(run_dir / "checkpoints").resolve(checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--checkpoint {checkpoint}: {err}") from None
    _prepare_out(out, overwrite)
    try:
        model, _, cfg = load_trained_model(run_dir, tag)
    except Exception as err:
        raise ConfigError(_describe_bad_checkpoint(run_dir / "checkpoints" / tag, err)) from None

    manifest = load_manifest(cfg.data.path)
    template = cfg.export.chat_template if chat_template is None else chat_template
    tokenizer, roles = hf_tokenizer(cfg.data.path, manifest, template)
    save_hf_model(model, dataclasses.asdict(cfg.model), out, dtype, roles, max_shard_size, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(out)
    return out


def save_hf_model(model, section: dict, out: Path, dtype: str = "fp32", roles: Optional[dict] = None,
                  max_shard_size: str = "5GB", vocab_size: Optional[int] = None) -> None:
    """Write a family model (its `model` config section given) as config, weights, generation
    config and model code into `out`. `roles`: the tokenizer's {"bos": id, ...}; `vocab_size`: the
    tokenizer's, when it appended ids the model was not trained with (their rows are added, zero)."""
    import torch
    from transformers import GenerationConfig

    from neurograph.model.configuration_neurograph import NeuroGraphConfig
    from neurograph.model.modeling_neurograph import NeuroGraphForCausalLM, NeuroGraphRecurrentForCausalLM
    from neurograph.model.recurrent import RecurrentGeneration

    section = dict(section)
    for impl in ("scan_impl", "conv_impl"):  # the C++ kernels are not shipped; "auto" picks what is there
        if section.get(impl) == "cpp":
            section[impl] = "auto"
    trained = section["vocab_size"]
    grown = vocab_size is not None and vocab_size > trained
    section["vocab_size"] = vocab_size if grown else trained
    wrapper = NeuroGraphRecurrentForCausalLM if isinstance(model, RecurrentGeneration) else NeuroGraphForCausalLM
    ids = {f"{role}_token_id": i for role, i in (roles or {}).items() if role != "unk"}
    config = NeuroGraphConfig(model_section=section, max_position_embeddings=getattr(model, "context_length", None),
                              architectures=[wrapper.__name__], trained_vocab_size=trained if grown else None, **ids)
    config.auto_map = {"AutoConfig": "configuration_neurograph.NeuroGraphConfig",
                       "AutoModelForCausalLM": f"modeling_neurograph.{wrapper.__name__}"}
    hf_model = wrapper(config)
    state = hf_model.model.state_dict()
    hf_model.model.load_state_dict({**state, **{k: _grow_rows(v, state[k].shape) for k, v in model.state_dict().items()}})
    hf_model.to(torch.bfloat16 if dtype == "bf16" else torch.float32).eval()
    hf_model.save_pretrained(out, max_shard_size=max_shard_size)
    GenerationConfig(**ids).save_pretrained(out)
    write_model_sources(out)


def _grow_rows(tensor, shape):
    """`tensor` zero-padded to `shape` (the dimensions that count the vocabulary grow)."""
    import torch.nn.functional as F

    pad = [n for dim in reversed(range(tensor.dim())) for n in (0, shape[dim] - tensor.shape[dim])]
    return F.pad(tensor, pad) if any(pad) else tensor


def log_to_mlflow(run_dir: Path, out: Path, register: Optional[str]) -> str:
    """Log the exported folder to the MLflow run that trained the model: as artifact `hf_model/`,
    or with `register` as an MLflow pyfunc model `hf_pyfunc` (launch/export/mlflow_pyfunc.py, holding
    the folder) registered as a new version of model `register`. Returns the run id."""
    import mlflow
    from mlflow.models import infer_signature

    from neurograph.trainer.tracking import default_tracking_uri

    from ..config import load_config

    id_file = run_dir / "mlflow_run_id"
    if not id_file.is_file():
        raise ConfigError(f"{id_file} not found: the run was trained without MLflow tracking")
    run_id = id_file.read_text().strip()
    mlflow.set_tracking_uri(load_config(run_dir / "config.yaml").tracking.uri or default_tracking_uri(run_dir))
    with mlflow.start_run(run_id=run_id):
        if not register:
            mlflow.log_artifacts(str(out), "hf_model")
            return run_id
        mlflow.pyfunc.log_model(name="hf_pyfunc", python_model=str(Path(__file__).with_name("mlflow_pyfunc.py")),
                                artifacts={"hf_model": str(out)}, registered_model_name=register,
                                pip_requirements=["torch", "transformers", "safetensors"],
                                signature=infer_signature(["prompt"], ["text"], params={"max_new_tokens": 64}))
    return run_id
