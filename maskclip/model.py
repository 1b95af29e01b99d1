"""The dual encoder and its public API.

``DualEncoder`` holds an image tower, a text tower and a logit scale (OpenAI CLIP's parameter
names under ``visual.`` and ``text.``), plus the preprocessing and tokenizer its config
implies. Every public method accepts user-level inputs (paths, PIL images, tensors, strings),
checks and converts them once, here, and then calls code that takes tensors: the towers,
``dense``, ``zero_shot.build_classifier`` / ``probabilities`` and ``segmentation.scores_many``.
``MaskCLIP`` is the class's former name, kept as an alias.
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import dense, refine as refinement, resclip_sfr, segmentation, serialization, transforms, zero_shot
from .proxy import DEFAULT_PROXY, Proxy
from .config import ModelConfig, is_timm_conv
from .errors import InputError, InputTypeError
from .tokenizer import get_tokenizer
from .towers import TextTower, VisionTower

# Attention costs grow with the square of the patch count: past a 128 x 128 grid (2048 px at
# patch 16) one image takes minutes on a CPU, so larger inputs are refused rather than hanging.
# Larger images can still be segmented in sliding windows (``segment(..., window=...)``).
MAX_PATCHES = 16384


class DualEncoder(nn.Module):
    """A CLIP-style dual encoder: OpenAI CLIP, open_clip, SLIP, MaskCLIP and RILS weights all load into it.

    Build from a config (random init), or with ``maskclip.load(...)`` for trained weights.
    """

    def __init__(self, config: Optional[ModelConfig] = None):
        super().__init__()
        if config is None:
            config = ModelConfig()
        if not isinstance(config, ModelConfig):
            raise InputTypeError(f"config must be a maskclip.ModelConfig; got {type(config).__name__}")
        self.config = config.validate()
        if config.vision.timm_model_name is None:
            self.visual = VisionTower(config.vision, config.embed_dim)
        elif is_timm_conv(config.vision.timm_model_name):
            from .timm_conv import TimmConvTower  # imports timm (and torchvision) only for these towers

            self.visual = TimmConvTower(config.vision, config.embed_dim)
        else:
            from .timm_vision import TimmVisionTower

            self.visual = TimmVisionTower(config.vision, config.embed_dim)
        self.text = TextTower(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        if config.logit_bias_init is not None:  # sigmoid-trained (SigLIP); softmax models have no such key
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init)))
        else:
            self.logit_bias = None
        self.preprocess = transforms.Preprocess(config.preprocess)
        self._autocast: Optional[torch.dtype] = None
        self._proxies = {}  # ProxyCLIP proxies built by name; a plain dict, so not in the state dict
        self._tokenizer = None  # built on first use (``tokenizer``)
        # Set by maskclip.load for non-CLIP tokenizers: builds the tokenizer, and gives the folder holding its
        # files (save_pretrained copies them).
        self.tokenizer_loader: Optional[Callable[[], object]] = None
        self.tokenizer_files: Optional[Callable[[], object]] = None

    # --- properties --------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text.token_embedding.weight.dtype

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def autocast(self) -> Optional[torch.dtype]:
        """Mixed precision of the encoders: ``torch.bfloat16``/``torch.float16``, or ``None`` (off).

        When set, ``encode_*`` and ``dense_features`` run under ``torch.autocast`` on the model's
        device (matrix products in that dtype, norms and softmax in fp32, weights untouched) and
        return the model's dtype. bf16 is the one to use on CPUs with AVX-512 BF16 or AMX.
        """
        return self._autocast

    @autocast.setter
    def autocast(self, dtype: Optional[torch.dtype]) -> None:
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise InputError(f"autocast must be None, torch.bfloat16 or torch.float16; got {dtype!r}")
        self._autocast = dtype

    def _compute(self):
        """The context the encoders run in: ``torch.autocast`` when ``self.autocast`` is set."""
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast)

    def compile(self, **kwargs) -> "DualEncoder":
        """``torch.compile`` the transformer of each tower in place; ``kwargs`` go to ``torch.compile``.

        The encoders call the towers, so every ``encode_*``, ``dense_features`` and ``forward`` runs
        compiled (``nn.Module.compile`` would compile only ``forward``). The first call of each
        input shape compiles (tens of seconds on CPU); text lengths vary, so the text side compiles
        with dynamic shapes. Returns the model.
        """
        self.visual.compile_blocks(**kwargs)
        self.text.transformer.compile(**{"dynamic": True, **kwargs})
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.transformer.grad_checkpointing = enable

    # --- inputs ------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        """This model's tokenizer: texts -> ``LongTensor[B, L]`` (``maskclip.tokenizer.Tokenizer``'s call).

        OpenAI CLIP's BPE unless the config names another (``text.hf_tokenizer_name``, SigLIP's
        SentencePiece): that one is read from the checkpoint folder on first use, or set here.
        """
        if self._tokenizer is None:
            if not self.config.text.hf_tokenizer_name:
                return get_tokenizer()
            if self.tokenizer_loader is None:
                raise InputError(
                    f"this model's tokenizer ({self.config.text.hf_tokenizer_name!r}) is not CLIP's and was not "
                    "loaded: load the model with maskclip.load from its folder or Hub repo (which holds the "
                    "tokenizer files), set model.tokenizer, or pass token ids")
            self._tokenizer = self.tokenizer_loader()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        if not callable(tokenizer):
            raise InputTypeError(f"tokenizer must be callable (texts -> LongTensor[B, L]); got {type(tokenizer).__name__}")
        self._tokenizer = tokenizer

    def tokenize(self, texts, truncate: bool = True) -> torch.Tensor:
        """str | list[str] -> ``LongTensor[B, context_length]`` (ids identical to OpenAI CLIP for CLIP's tokenizer)."""
        return self.tokenizer(texts, context_length=self.config.text.context_length, truncate=truncate)

    def image_batch(self, images, size: Optional[int] = None) -> torch.Tensor:
        """Any accepted image input -> model input ``[B, 3, H, W]`` on the model's device and dtype."""
        x = transforms.to_batch(images, self.config.preprocess, size=size)
        p = self.config.vision.patch_size
        if x.shape[-1] < p or x.shape[-2] < p:
            raise InputError(
                f"images must be at least one patch ({p}x{p} px) after preprocessing; got {tuple(x.shape[-2:])}"
            )
        self._check_patch_count(*x.shape[-2:])
        return x.to(device=self.device, dtype=self.dtype)

    def _check_patch_count(self, h: int, w: int) -> None:
        """Refuse model inputs of ``h x w`` px with more than ``MAX_PATCHES`` patches."""
        p = self.config.vision.patch_size
        patches = (h // p) * (w // p)
        if patches > MAX_PATCHES:
            raise InputError(
                f"images of {w}x{h} px make {patches} patches of {p}x{p}; at most "
                f"maskclip.model.MAX_PATCHES = {MAX_PATCHES} are encoded at once (use a smaller size, or "
                "segment(..., window=...) for large images)"
            )

    def text_batch(self, texts) -> torch.Tensor:
        """str | list[str] | token ids ``[L]`` / ``[B, L]`` -> ``LongTensor[B, L]`` on the model's device."""
        if isinstance(texts, torch.Tensor):
            return self._check_tokens(texts).to(self.device)
        return self.tokenize(texts).to(self.device)

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.config.text
        if tokens.dtype in (torch.bool,) or tokens.is_floating_point() or tokens.is_complex():
            raise InputTypeError(f"token ids must be an integer tensor; got dtype {tokens.dtype}")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise InputError(f"token ids must have shape [B, L] with B, L > 0; got {list(tokens.shape)}")
        if tokens.shape[1] > cfg.context_length:
            raise InputError(
                f"token ids must be at most {cfg.context_length} long (this model's context length); "
                f"got {tokens.shape[1]}"
            )
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise InputError(f"token ids must be in [0, {cfg.vocab_size}); got values in [{lo}, {hi}]")
        return tokens.long()

    # --- encoders ----------------------------------------------------------------------------

    def encode_image(self, images, normalize: bool = False) -> torch.Tensor:
        """Images (path | PIL | tensor | list) -> embeddings ``[B, E]``.

        Float tensors are taken as already preprocessed (as in open_clip); uint8 tensors,
        PIL images and paths are preprocessed with ``self.preprocess``.
        """
        feats = self._image_features(self.image_batch(images))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, texts, normalize: bool = False) -> torch.Tensor:
        """Texts (str | list[str] | token ids ``[B, L]``) -> embeddings ``[B, E]``."""
        feats = self._text_features(self.text_batch(texts))
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """open_clip's training forward: normalised image and text embeddings and ``exp(logit_scale)``."""
        return self.encode_image(images, normalize=True), self.encode_text(texts, normalize=True), self.logit_scale.exp()

    def dense_features(self, images, normalize: bool = False, method: str = "vanilla",
                       image_size: Optional[int] = None, proxy=None) -> torch.Tensor:
        """Images -> patch features in the joint image-text space ``[B, E, h, w]``.

        ``method``: ``vanilla`` | ``zhou`` | ``sclip`` | ``clearclip`` | ``naclip`` | ``resclip``
        | ``proxyclip`` (see ``maskclip.dense``; ``maskclip`` is accepted for ``zhou``).
        ``image_size`` overrides the preprocessing size for PIL/path/uint8 inputs (e.g. 448 gives a
        28 x 28 grid at patch 16); float tensors are used at their own size. ``proxy`` (``proxyclip``
        only): a name in ``maskclip.proxy.PROXIES`` or a timm model name (weights downloaded by timm
        on first use, then kept by this model), a ``maskclip.proxy.Proxy`` or a timm ViT; default
        ``dino_vitb8``. ``proxyclip``'s features are on the proxy's patch grid.
        """
        method = dense.resolve_method(method, self.visual)
        proxy = self._check_proxy(method, proxy)
        feats = self._dense_features(self.image_batch(images, size=image_size), method, proxy)
        return F.normalize(feats, dim=1) if normalize else feats

    # Below the public methods: checked model inputs on the model's device, no further checks.

    def _image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Model input ``[B, 3, H, W]`` -> embeddings ``[B, E]``."""
        with self._compute():
            return self.visual(x).to(self.dtype)

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> embeddings ``[B, E]``."""
        with self._compute():
            return self.text(tokens).to(self.dtype)

    def _prompt_embeddings(self, prompts: List[str]) -> torch.Tensor:
        """Prompts built from checked labels and templates -> unit-norm embeddings ``[N, E]``."""
        return F.normalize(self._text_features(self.tokenize(prompts).to(self.device)), dim=-1)

    def _check_proxy(self, method: str, proxy) -> Optional[Proxy]:
        """``proxy`` as given -> a ``Proxy`` for ``proxyclip``, ``None`` otherwise.

        The proxy is moved (in place, as ``nn.Module.to`` does) to the model's device and dtype.
        """
        if method != "proxyclip":
            if proxy is not None:
                raise InputError(f"proxy is used only with method='proxyclip'; got a proxy with method={method!r}")
            return None
        if proxy is None or isinstance(proxy, str):
            name = DEFAULT_PROXY if proxy is None else proxy
            if name not in self._proxies:
                self._proxies[name] = Proxy.from_timm(name)
            proxy = self._proxies[name]
        elif not isinstance(proxy, Proxy):
            proxy = Proxy(proxy)
        return proxy.to(self.device, self.dtype)

    def _dense_features(self, x: torch.Tensor, method: str, proxy: Optional[Proxy] = None) -> torch.Tensor:
        """Model input ``[B, 3, H, W]`` and a name in ``dense.METHODS`` -> patch features ``[B, E, h, w]``.

        ``proxy``: from ``_check_proxy``; ``proxyclip`` without one uses the default proxy.
        """
        if method == "proxyclip" and proxy is None:
            proxy = self._check_proxy(method, None)
        features = None
        if proxy is not None:
            pp = self.config.preprocess
            features = partial(proxy.features, clip_mean=pp.mean, clip_std=pp.std)
        with self._compute():
            return dense.dense_features(self.visual, x, method, features).to(self.dtype)

    def _sfr_features(self, x: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """Model input ``[B, 3, H, W]`` and a classifier ``[E, Q]`` -> ResCLIP + SFR patch features ``[B, E, h, w]``."""
        with self._compute():
            return resclip_sfr.dense_features(self.visual, x, classifier).to(self.dtype)

    # --- zero-shot ---------------------------------------------------------------------------

    @torch.no_grad()
    def zero_shot_classifier(self, classnames: Sequence[str], templates=None) -> torch.Tensor:
        """Class names x templates -> classifier ``[E, C]`` (see ``maskclip.zero_shot``).

        ``templates``: ``None`` (names used as written), a bundled set name such as
        ``"openai_imagenet"``, or a list of strings containing ``{}``. Class names may repeat.
        """
        classnames = zero_shot.check_labels(classnames, allow_duplicates=True)
        return zero_shot.build_classifier(self._prompt_embeddings, classnames, zero_shot.resolve_templates(templates))

    @property
    def sigmoid_probabilities(self) -> bool:
        """True for sigmoid-trained models (a ``logit_bias``, SigLIP): ``classify`` gives per-label probabilities."""
        return self.logit_bias is not None

    @torch.no_grad()
    def classify(self, images, labels: Sequence[str], templates=None) -> torch.Tensor:
        """Images and candidate labels (unique) -> probabilities ``[B, C]``.

        Softmax-trained models (CLIP): a softmax over the labels, rows summing to 1. Sigmoid-trained
        models (``logit_bias`` present, SigLIP): each label's own probability
        ``sigmoid(exp(logit_scale) * cos + logit_bias)``, as they were trained to be read; rows need
        not sum to 1 (``sigmoid_probabilities`` says which).
        """
        labels = zero_shot.check_labels(labels)
        templates = zero_shot.resolve_templates(templates)
        x = self.image_batch(images)
        classifier = zero_shot.build_classifier(self._prompt_embeddings, labels, templates)
        feats = F.normalize(self._image_features(x), dim=-1)
        return zero_shot.probabilities(feats, classifier, self.logit_scale, self.logit_bias)

    @torch.no_grad()
    def segment(self, image, labels: Sequence[str], templates=None, method: Optional[str] = None,
                size: Optional[int] = None, window: Optional[int] = None, stride: Optional[int] = None,
                return_scores: bool = False, refine: Optional[str] = None, proxy=None, sfr: bool = False):
        """One image and labels -> ``LongTensor[H, W]``, the label index of every input pixel.

        The shorter side is resized to ``size`` (default: the model's image size); with
        ``window`` the features are computed in sliding windows (``stride`` default window/2).
        ``method`` and ``proxy`` as in ``dense_features``; default ``clearclip`` (``vanilla`` for a ConvNeXt
        tower, its only method: ``dense.default_method``). ``refine="pamr"`` post-processes the scores with the
        image (``maskclip.refine.pamr``: 10 iterations, dilations 8 and 16). ``sfr=True`` (``resclip``
        only) adds ResCLIP's semantic feedback refinement (``maskclip.resclip_sfr``). ``return_scores=True``
        also returns the (refined) cosine scores ``[C, H, W]``.
        """
        labels = zero_shot.check_labels(labels)
        x, out_size = transforms.segmentation_input(image, self.config.preprocess, size=size)
        templates = zero_shot.resolve_templates(templates)
        method = dense.resolve_method(dense.default_method(self.visual) if method is None else method, self.visual)
        window, stride = segmentation.check_window(window, stride, self.config.vision.patch_size)
        refine = refinement.check_refine(refine)
        proxy = self._check_proxy(method, proxy)
        sfr = resclip_sfr.check_sfr(sfr, method)
        classifier = zero_shot.build_classifier(self._prompt_embeddings, labels, templates)
        scores = self._segmentation_scores(x, out_size, classifier, method, window, stride, refine, proxy, sfr)
        label_map = scores.argmax(dim=0)
        return (label_map, scores) if return_scores else label_map

    def _segmentation_scores(self, x: torch.Tensor, out_size: Tuple[int, int], classifier: torch.Tensor,
                             method: str, window: Optional[int], stride: Optional[int],
                             refine: Optional[str] = None, proxy: Optional[Proxy] = None,
                             sfr: bool = False) -> torch.Tensor:
        """Checked ``segment`` inputs -> scores ``[C, H, W]`` (``_segmentation_scores_many`` of one image)."""
        (_, scores), = self._segmentation_scores_many([(x, out_size, None)], classifier, method, window, stride,
                                                      refine, proxy, sfr)
        return scores

    def _segmentation_scores_many(self, inputs: Iterable, classifier: torch.Tensor, method: str,
                                  window: Optional[int], stride: Optional[int], refine: Optional[str] = None,
                                  proxy: Optional[Proxy] = None, sfr: bool = False,
                                  batch_size: int = segmentation.BATCH_SIZE) -> Iterator[Tuple[object, torch.Tensor]]:
        """Checked ``segment`` inputs of many images -> their scores ``[C, H, W]``, in order (also run by
        ``maskclip.eval``'s segmentation).

        ``inputs``: ``(x, out_size, key)`` with ``x`` ``segmentation_input``'s ``[1, 3, h, w]``; yields
        ``(key, scores)``. The windows of consecutive images share forward passes, ``batch_size`` windows
        each (``segmentation.scores_many``). ``method``: a name in ``dense.METHODS`` or
        ``dense.PROXY_METHODS``; ``window`` / ``stride``: from ``segmentation.check_window``; ``refine``: from
        ``refine.check_refine``; ``proxy``: from ``_check_proxy``; ``sfr``: from ``resclip_sfr.check_sfr``
        (the classifier then also steers the features). PAMR sees the preprocessed image resized to
        ``out_size``, as NACLIP feeds it the normalised input.
        """
        p = self.config.vision.patch_size
        features = partial(self._dense_features, method=method, proxy=proxy)
        if sfr:
            features = partial(self._sfr_features, classifier=classifier)

        def on_device():
            for x, out_size, key in inputs:
                self._check_patch_count(*segmentation.feature_input_size(x.shape[-2:], p, window))
                yield x.to(self.device, self.dtype), out_size, (x, key)

        for (x, key), scores in segmentation.scores_many(features, on_device(), classifier, p, window, stride,
                                                         batch_size):
            if refine == "pamr":
                image = F.interpolate(x.float(), size=scores.shape[-2:], mode="bilinear", align_corners=False)
                scores = refinement.pamr(image, scores[None])[0]
            yield key, scores

    # --- saving ------------------------------------------------------------------------------

    def save_pretrained(self, path, format: str = "maskclip") -> None:
        """Write a folder that ``maskclip.load`` (or open_clip / transformers, per ``format``) reads."""
        serialization.save_pretrained(self, path, format=format)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Save in the native format and upload to the Hugging Face Hub (``huggingface_hub``)."""
        return serialization.push_to_hub(self, repo_id, **kwargs)


MaskCLIP = DualEncoder  # the former name, kept so existing code keeps working
