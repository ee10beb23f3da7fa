"""Register torchvision's operator schemas with a pure-torch CPU `nms` before torchvision loads.

Why: the only torchvision wheels in the reachable registries are CUDA builds; beside the CPU torch
their native library fails to load and `import torchvision` dies with
"operator torchvision::nms does not exist" — which also breaks open_clip, timm, transformers' model
classes and vLLM's LLaVA path (README.md, "Installation details"). Defining the `torchvision::nms` and
`torchvision::qnms` schemas (and a CPU kernel for nms) first lets torchvision import cleanly.

`infra/setup.sh` installs this module plus a `.pth` file into site-packages **only when** a probe
shows the native ops fail to load, so every interpreter (Ray workers, vLLM engine processes) has it.
The `.pth` only adds a meta-path hook (no torch import): the schemas are registered the first time a
process imports torchvision, so interpreters that never touch torch (Ray's dashboard agent, the
Prefect server) start as fast as without it. On a machine with a proper CPU torchvision or a CUDA
torch it is never installed.
"""

from __future__ import annotations


def _nms_cpu(boxes, scores, iou_threshold: float):
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for i_pos in range(len(order)):
        if suppressed[i_pos]:
            continue
        i = order[i_pos]
        keep.append(int(i))
        rest = order[i_pos + 1 :]
        xx1 = torch.maximum(x1[i], x1[rest])
        yy1 = torch.maximum(y1[i], y1[rest])
        xx2 = torch.minimum(x2[i], x2[rest])
        yy2 = torch.minimum(y2[i], y2[rest])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[rest] - inter).clamp(min=1e-12)
        suppressed[i_pos + 1 :] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def install() -> None:
    try:
        import torch
    except Exception:  # torch missing or broken: nothing to patch
        return
    try:
        if torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU"):
            return
    except Exception:
        pass
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        impl = torch.library.Library("torchvision", "IMPL", "CPU")
        impl.impl("nms", _nms_cpu)
        # keep the libraries alive for the process lifetime
        globals()["_LIBS"] = (lib, impl)
    except RuntimeError:
        # already defined (e.g. a real torchvision loaded first): leave it alone
        pass


class _TorchvisionHook:
    """A meta-path finder that runs `install()` just before `torchvision` is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            import sys

            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            install()
        return None  # let the regular finders import the module


def activate() -> None:
    """Called from the .pth file at interpreter start: cheap (imports nothing heavy)."""
    import sys

    if "torchvision" in sys.modules:
        install()
    elif not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())
