"""A frozen classifier: ``(logits, activations)`` per call, differentiable with respect to the input image.

:class:`FrozenClassifier` wraps any ``nn.Module`` — kept in eval mode, every parameter
``requires_grad=False`` — and returns a :class:`ClassifierOutput`. Activations are captured by forward hooks
registered at the start of each call and removed in ``finally``, so no state survives a call and the
wrapper works inside ``torch.func`` transforms. :func:`default_layers` picks the layers matched by default
(the built-ins' documented pair, else the last two feature maps or token sequences). :class:`ClassifierBundle`
is a model with its preprocessing, class names, rebuild config, metrics and the weights' sha256: what
:mod:`.sources` builds and :mod:`.bundle` saves and loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ModelError, UsageError, one_line
from .architectures import ResNet, ViT

if TYPE_CHECKING:
    from ..data.preprocess import Preprocess

__all__ = ["ClassifierOutput", "default_layers", "FrozenClassifier", "ClassifierBundle"]


class ClassifierOutput(NamedTuple):
    """What a :class:`FrozenClassifier` returns.

    Args:
        logits: ``[B, K]`` class scores.
        activations: layer name → activation: ``[B, C, h, w]`` for CNN layers, ``[B, T, D]`` for
            transformer blocks (the token sequence, cls token first).
    """

    logits: Tensor
    activations: dict[str, Tensor]


#: A forward hook: ``hook(module, inputs, output)``.
_Hook = Callable[[nn.Module, Any, Any], None]


def _unwrap(model: nn.Module) -> nn.Module:
    """The user model inside a :class:`FrozenClassifier` (or ``model`` itself)."""
    return model.model if isinstance(model, FrozenClassifier) else model


def _first_tensor(output: Any) -> Tensor | None:
    """``output`` if it is a tensor, else the first element of a tuple/list output if that is a tensor."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _as_logits(output: Any) -> Tensor:
    """Logits from a model's output: a tensor, an object with ``.logits``, a dict or a tuple (first item).

    Raises:
        ModelError: no ``[B, K]`` tensor can be found.
    """
    if isinstance(output, Mapping) and "logits" in output:
        output = output["logits"]
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
        output = output.logits
    elif isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, Tensor):
        raise ModelError(f"the model returned {type(output).__name__}, expected a logits tensor [B, K]")
    if output.dim() != 2:
        raise ModelError(
            f"the model returned a tensor of shape {tuple(output.shape)}, expected logits [B, K]"
        )
    return output


def _named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule of ``model`` under every name it has (the root excluded)."""
    return {n: m for n, m in model.named_modules(remove_duplicate=False) if n}


def _valid_names_hint(names: Sequence[str], limit: int = 12) -> str:
    """A short comma-separated list of some valid layer names, shallowest (top-level) first."""
    shown = ", ".join(sorted(names, key=lambda n: n.count("."))[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _builtin_defaults(model: nn.Module) -> list[str] | None:
    """The documented default layers of a built-in architecture, or None for another model."""
    if isinstance(model, ResNet):
        return ["layer3", "layer4"]
    if isinstance(model, ViT):
        n = len(model.blocks)
        return [f"blocks.{i}" for i in range(max(0, n - 2), n)]
    return None


def _scan_outputs(model: nn.Module, example_input: Tensor) -> list[tuple[str, Tensor]]:
    """Run one forward pass with a hook on every submodule; ``(name, output)`` in order of completion.

    A module called several times is listed at its last call. Non-tensor outputs are skipped.
    """
    events: list[tuple[str, Tensor]] = []
    handles = []

    def make_hook(name: str) -> _Hook:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is not None:
                events.append((name, t))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            try:
                model(example_input)
            except Exception as e:
                raise ModelError(f"forward pass on the example input failed: {one_line(e, typed=True)}") from e
    finally:
        for h in handles:
            h.remove()
    last: dict[str, int] = {}
    for i, (name, _) in enumerate(events):
        last[name] = i
    return [events[i] for i in sorted(last.values())]


def default_layers(model: nn.Module, example_input: Tensor | None = None) -> list[str]:
    """The layers whose activations medcam-fast matches by default.

    The rule, in order:

    1. the built-in :class:`ResNet`: ``["layer3", "layer4"]``; the built-in :class:`ViT`: its last two
       blocks (``["blocks.2", "blocks.3"]``);
    2. any other model: one forward pass of ``example_input`` with a hook on every submodule; the last two
       modules, in order of completion, whose outputs are 4-D feature maps with ``h·w > 1`` — unless a 3-D
       token sequence ``[B, T, D]`` completes after the last of them (a transformer, whose attention
       internals are 4-D ``[B, heads, T, d]``): then the last two token sequences; the model itself is
       excluded. When several modules
       return the very same tensor (a container and its last child), only the outermost (last to
       complete) counts. Fewer than two candidates give a one-element list.

    Args:
        model: the classifier (a :class:`FrozenClassifier` is unwrapped).
        example_input: one normalized batch ``[B, C, H, W]``; only needed for non-built-in models.

    Raises:
        UsageError: a non-built-in model without ``example_input``.
        ModelError: the forward pass fails, or no submodule produces a feature map or token sequence.
    """
    model = _unwrap(model)
    builtin = _builtin_defaults(model)
    if builtin is not None:
        return builtin
    if example_input is None:
        raise UsageError("default_layers needs an example input for a model that is not built in")
    events = _scan_outputs(model, example_input)
    # Collapse modules that returned the same tensor object: keep the one that completed last.
    last_by_tensor: dict[int, int] = {}
    for i, (_, t) in enumerate(events):
        last_by_tensor[id(t)] = i
    distinct = [events[i] for i in sorted(last_by_tensor.values())]
    maps = [i for i, (_, t) in enumerate(distinct) if t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1]
    tokens = [i for i, (_, t) in enumerate(distinct) if t.dim() == 3]
    # A transformer's token stream completes after any 4-D tensor inside it (attention heads [B, h, T, d]):
    # then the tokens are the features.
    idx = tokens[-2:] if tokens and (not maps or tokens[-1] > maps[-1]) else maps[-2:]
    chosen = [distinct[i][0] for i in idx]
    if not chosen:
        raise ModelError(
            "no submodule returns a 4-D feature map or a 3-D token sequence: pass layers explicitly "
            "(or layers=[] to use the logits only)"
        )
    return chosen


class FrozenClassifier(nn.Module):
    """A frozen classifier that returns ``(logits, activations)``, differentiable w.r.t. the input.

    The wrapped model is put in eval mode (and kept there: :meth:`train` is a no-op) and every parameter
    gets ``requires_grad=False``; gradients still flow to the input image. Activations are captured by
    forward hooks registered at the start of each :meth:`forward` call and removed in ``finally``, so no
    state survives a call, calls are independent, and it works inside ``torch.func`` transforms. A layer
    called several times in one forward pass reports its last output.

    Args:
        model: the classifier; its forward maps normalized images ``[B, C, H, W]`` to logits ``[B, K]``
            (or a tuple / dict / object with ``.logits`` holding them).
        layers: names (as in ``model.named_modules()``) of the layers whose outputs are returned; None
            selects :func:`default_layers`; ``[]`` returns no activations.
        example_input: a normalized batch used to find the default layers of a non-built-in model; without
            it they are found on the first call.
        num_classes: number of classes, if known (otherwise read from the model or the first call).

    Raises:
        UsageError: an unknown layer name (the message lists some valid names).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        example_input: Tensor | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        model = _unwrap(model)
        self.model = model
        _set_eval(model)
        for p in model.parameters():
            p.requires_grad_(False)
        self.training = False
        self._num_classes = num_classes
        self._layers: list[str] | None = None
        if layers is not None:
            self._layers = self._check_layers(layers)
        elif _builtin_defaults(model) is not None or example_input is not None:
            self._layers = default_layers(model, example_input)

    def _check_layers(self, layers: Sequence[str]) -> list[str]:
        """Validate layer names against the model's submodules.

        Args:
            layers: requested layer names.
        """
        if isinstance(layers, str):
            raise UsageError(f"layers must be a list of names, got the string {layers!r}")
        modules = _named_modules(self.model)
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise UsageError(
                f"unknown layer {unknown[0]!r}; valid names include: {_valid_names_hint(list(modules))}"
            )
        return list(dict.fromkeys(layers))

    def train(self, mode: bool = True) -> FrozenClassifier:
        """Does nothing but keep eval mode: a frozen classifier never trains.

        Args:
            mode: ignored.
        """
        _set_eval(self.model)
        self.training = False
        return self

    @property
    def layers(self) -> list[str]:
        """Names of the layers whose activations :meth:`forward` returns.

        Raises:
            UsageError: the defaults of a non-built-in model are not known yet (no example input, no call).
        """
        if self._layers is None:
            raise UsageError(
                "the default layers of this model are found on the first call: pass example_input or layers"
            )
        return list(self._layers)

    @property
    def num_classes(self) -> int:
        """Number of classes (logits per image).

        Raises:
            UsageError: not known yet (pass ``num_classes`` or call the classifier once).
        """
        if self._num_classes is not None:
            return self._num_classes
        k = getattr(self.model, "num_classes", None)
        if isinstance(k, int):
            return k
        raise UsageError("the number of classes is known after the first call: pass num_classes")

    def head(self) -> tuple[Tensor, Tensor | None] | None:
        """The classifier's final linear layer ``(W [K, D], b [K] or None)``: the last ``nn.Linear`` (in module
        order) with one output per class; None when there is none. Read live, so a re-initialized head is the
        one returned. The classifier-aware decoder applies it at every position of a feature map (CAM).
        """
        k = self._num_classes if self._num_classes is not None else getattr(self.model, "num_classes", None)
        found = None
        for module in self.model.modules():
            if isinstance(module, nn.Linear) and (k is None or module.out_features == k):
                found = module
        return None if found is None else (found.weight, found.bias)

    def logits(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` of normalized images ``x`` ``[B, C, H, W]``, without activation hooks.

        Args:
            x: normalized images.
        """
        logits = _as_logits(self.model(x))
        if self._num_classes is None:
            self._num_classes = int(logits.shape[1])
        return logits

    def probs(self, x: Tensor) -> Tensor:
        """Class probabilities ``softmax(logits)`` ``[B, K]``.

        Args:
            x: normalized images.
        """
        return torch.softmax(self.logits(x), dim=-1)

    def forward(self, x: Tensor) -> ClassifierOutput:
        """Logits and activations of normalized images ``x`` ``[B, C, H, W]``.

        Args:
            x: normalized images (may require grad, or be a ``torch.func`` wrapped tensor).

        Raises:
            ModelError: a requested layer is not called by the model's forward.
        """
        if self._layers is None:
            self._layers = default_layers(self.model, x.detach())
        modules = _named_modules(self.model)
        captured: dict[str, Tensor] = {}
        handles = []

        def make_hook(name: str) -> _Hook:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                t = _first_tensor(output)
                if t is not None:
                    captured[name] = t

            return hook

        try:
            for name in self._layers:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            logits = _as_logits(self.model(x))
        finally:
            for h in handles:
                h.remove()
        missing = [name for name in self._layers if name not in captured]
        if missing:
            raise ModelError(f"layer {missing[0]!r} did not return a tensor during the forward pass")
        if self._num_classes is None:
            self._num_classes = int(logits.shape[1])
        return ClassifierOutput(logits, {name: captured[name] for name in self._layers})


def _set_eval(model: nn.Module) -> None:
    """Put ``model`` and all submodules in eval mode (exported programs refuse ``.eval()``: set the flags)."""
    try:
        model.eval()
    except NotImplementedError:
        for m in model.modules():
            m.training = False


@dataclass
class ClassifierBundle:
    """A classifier together with everything needed to use, save and rebuild it.

    Args:
        model: the ``nn.Module`` (normalized ``[B, C, H, W]`` → logits ``[B, K]``).
        preprocess: the preprocessing its inputs need (:class:`~medcam_fast.data.preprocess.Preprocess`).
        classes: class names, index = logit index.
        arch: ``"resnet18"``, ``"vit"``, ``"import"``, ``"export"`` or ``"timm:<name>"``.
        config: what is needed to rebuild the architecture (arch, in_channels, num_classes, image_size,
            width … for built-ins; the factory / program / timm name for other sources).
        metrics: training results (``val_accuracy``, ``test_accuracy``, ``epochs``, ``seconds``, ``n_train``).
        sha256: sha256 of the weights as written to ``weights.safetensors`` (see :func:`state_sha256`).
        source: ``"builtin"``, ``"import"``, ``"export"`` or ``"timm"``.
        sealed: False when it was loaded from a ``classifier.json`` without a content hash (by request).
    """

    model: nn.Module
    preprocess: Preprocess
    classes: list[str]
    arch: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    source: str = "builtin"
    sealed: bool = True

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def frozen(self, layers: Sequence[str] | None = None) -> FrozenClassifier:
        """A :class:`FrozenClassifier` of this bundle's model (freezes ``self.model`` in place).

        Args:
            layers: activation layers; None selects :func:`default_layers` (found with a zero image of the
                preprocessing's size for non-built-in models).
        """
        example = None
        if layers is None and _builtin_defaults(self.model) is None:
            h, w = self.preprocess.size
            example = torch.zeros(1, self.preprocess.channels, h, w)
        return FrozenClassifier(self.model, layers, example_input=example, num_classes=len(self.classes))
