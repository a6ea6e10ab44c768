"""Synthetic VoxCPM checkpoints: voxcpm's own classes with random weights.

Model hubs are unreachable from CI and from a laptop without credentials, so tests, the
local config and the GPU benchmarks load checkpoints written here through the same
``VoxCPM.from_pretrained(<directory>)`` path users take with real weights.

Random weights speak noise. Their stop head would end generation after a random number of
steps, so it is biased to always say "continue": generation then runs to voxcpm's own
length cap, ``min(6 * text_tokens + 10, max_len)`` steps, which makes the length of a
sentence predictable (a few seconds for the ``tiny`` presets) while ``max_len`` still rules.

    python -m serve_app.model.synthetic --preset tiny-voxcpm1.5 --out checkpoints/tiny-voxcpm1.5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.config import SyntheticPreset

# Characters the synthetic tokenizer knows; anything else maps to <unk>. The ids voxcpm
# hard-codes (101-104: audio/ref start and end) fall inside this vocabulary.
_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
_CJK = [chr(c) for c in range(0x4E00, 0x9FA6)]
_PUNCTUATION = list("，。！？；：、“”‘’（）《》…—")
_ASCII = [chr(c) for c in range(0x20, 0x7F)]
STOP_CONTINUE_LOGIT = 30.0  # logit margin of "continue" over "stop" in the biased stop head


@dataclass(frozen=True)
class Preset:
    """Dimensions of one checkpoint; ``lm`` fields follow MiniCPM4Config."""

    architecture: str  # "voxcpm" (0.5B / 1.5) or "voxcpm2"
    lm_hidden: int
    lm_layers: int
    lm_heads: int
    lm_kv_heads: int
    lm_ffn: int
    residual_layers: int
    local_hidden: int  # feature encoder and DiT
    local_layers: int
    local_heads: int
    local_ffn: int
    patch_size: int
    vae: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 0  # 0: the synthetic character vocabulary
    fsq_latent_dim: int = 256
    dtype: str = "bfloat16"  # of the LM and DiT, as the real checkpoints ship


def _tiny(architecture: str, patch_size: int, vae: dict[str, Any]) -> Preset:
    return Preset(
        architecture=architecture,
        lm_hidden=64,
        lm_layers=2,
        lm_heads=4,
        lm_kv_heads=2,
        lm_ffn=128,
        residual_layers=1,
        local_hidden=64,
        local_layers=1,
        local_heads=4,
        local_ffn=128,
        patch_size=patch_size,
        vae=vae,
        fsq_latent_dim=32,
        dtype="float32",  # faster than bfloat16 on CPU, where the tiny presets run
    )


# Real dimensions as published for the open VoxCPM releases (MiniCPM4 backbones); used to
# measure speed and memory on a GPU, never for quality. The hubs are unreachable where this was
# written, so they could not be checked against the releases' config.json: compare before quoting.
_MINICPM4_LOCAL = dict(local_hidden=1024, local_layers=4, local_heads=16, local_ffn=4096, vocab_size=73448)
_MINICPM4_05B = dict(lm_hidden=1024, lm_layers=24, lm_heads=16, lm_kv_heads=2, lm_ffn=4096, **_MINICPM4_LOCAL)

PRESETS: dict[SyntheticPreset, Preset] = {
    # 44.1 kHz like VoxCPM1.5; 735-sample hop, 2 latents per step: 33 ms of audio per step.
    "tiny-voxcpm1.5": _tiny(
        "voxcpm",
        patch_size=2,
        vae=dict(
            encoder_dim=16,
            encoder_rates=[3, 5, 7, 7],
            latent_dim=16,
            decoder_dim=64,
            decoder_rates=[7, 7, 5, 3],
            depthwise=True,
            sample_rate=44100,
        ),
    ),
    # 48 kHz out, 16 kHz prompts like VoxCPM2; 40 ms of audio per step.
    "tiny-voxcpm2": _tiny(
        "voxcpm2",
        patch_size=2,
        vae=dict(
            encoder_dim=16,
            encoder_rates=[2, 4, 5, 8],
            latent_dim=16,
            decoder_dim=256,
            decoder_rates=[8, 6, 5, 2, 2],
            depthwise=True,
            sample_rate=16000,
            out_sample_rate=48000,
            cond_dim=16,
        ),
    ),
    "voxcpm-0.5b": Preset(
        architecture="voxcpm", residual_layers=6, patch_size=2, vae=dict(sample_rate=16000), **_MINICPM4_05B
    ),
    "voxcpm1.5": Preset(
        architecture="voxcpm",
        residual_layers=8,
        patch_size=4,
        vae=dict(encoder_rates=[2, 3, 6, 7, 7], decoder_dim=2048, decoder_rates=[7, 7, 6, 3, 2], sample_rate=44100),
        **_MINICPM4_05B,
    ),
    "voxcpm2": Preset(
        architecture="voxcpm2",
        lm_hidden=2048,
        lm_layers=28,
        lm_heads=16,
        lm_kv_heads=2,
        lm_ffn=6144,
        residual_layers=8,
        patch_size=4,
        vae=dict(sample_rate=16000, out_sample_rate=48000),
        fsq_latent_dim=512,
        **_MINICPM4_LOCAL,
    ),
}


def _vocabulary() -> list[str]:
    return _SPECIAL_TOKENS + list(dict.fromkeys(_ASCII + _PUNCTUATION + _CJK))


def write_tokenizer(directory: Path) -> int:
    """Write a character-level WordLevel tokenizer that ``LlamaTokenizerFast`` loads."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaTokenizerFast

    vocab = {token: index for index, token in enumerate(_vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = LlamaTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
    )
    fast.save_pretrained(str(directory))
    return len(vocab)


def _config(preset: Preset, vocab_size: int, dtype: str) -> dict[str, Any]:
    head_dim = preset.lm_hidden // preset.lm_heads
    # voxcpm copies the LM's config (its RoPE factors, one per pair of head channels) into the local
    # encoder and DiT: their heads must be as wide as the LM's (VoxCPM2: 16 heads of 128 on 1024 channels)
    local = dict(
        hidden_dim=preset.local_hidden,
        ffn_dim=preset.local_ffn,
        num_heads=preset.local_heads,
        num_layers=preset.local_layers,
        kv_channels=head_dim,
    )
    return {
        "architecture": preset.architecture,
        "lm_config": {
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_size": preset.lm_hidden,
            "intermediate_size": preset.lm_ffn,
            "max_position_embeddings": 32768,
            "num_attention_heads": preset.lm_heads,
            "num_hidden_layers": preset.lm_layers,
            "num_key_value_heads": preset.lm_kv_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": {
                "type": "longrope",
                "long_factor": [1.0] * (head_dim // 2),
                "short_factor": [1.0] * (head_dim // 2),
                "original_max_position_embeddings": 32768,
            },
            "vocab_size": vocab_size,
            "use_mup": False,
            "scale_emb": 12,
            "dim_model_base": 256,
            "scale_depth": 1.4,
            "kv_channels": head_dim,
        },
        "patch_size": preset.patch_size,
        "feat_dim": preset.vae.get("latent_dim", 64),
        "residual_lm_num_layers": preset.residual_layers,
        "scalar_quantization_latent_dim": preset.fsq_latent_dim,
        "scalar_quantization_scale": 9,
        "encoder_config": local,
        "dit_config": {
            **local,
            "cfm_config": {"sigma_min": 1e-6, "solver": "euler", "t_scheduler": "log-norm", "inference_cfg_rate": 2.0},
        },
        "audio_vae_config": preset.vae,
        "max_length": 4096,
        "device": "cuda",
        "dtype": dtype,
    }


def _model_classes(architecture: str) -> tuple[Any, Any, Any]:
    if architecture == "voxcpm2":
        from voxcpm.model.voxcpm2 import VoxCPM2Model, VoxCPMConfig
        from voxcpm.modules.audiovae import AudioVAEV2

        return VoxCPM2Model, VoxCPMConfig, AudioVAEV2
    from voxcpm.model.voxcpm import VoxCPMConfig, VoxCPMModel
    from voxcpm.modules.audiovae import AudioVAE

    return VoxCPMModel, VoxCPMConfig, AudioVAE


def audio_vae(preset_name: SyntheticPreset) -> Any:
    """The preset's VAE alone, with random weights in float32 (as checkpoints ship it): for timing a release's
    decode without building the whole model."""
    preset = PRESETS[preset_name]
    _, config_cls, vae_cls = _model_classes(preset.architecture)
    return vae_cls(config=config_cls.model_validate(_config(preset, 100, "float32")).audio_vae_config)


def instantiate(preset_name: SyntheticPreset, directory: Path, dtype: str | None = None) -> tuple[dict[str, Any], Any]:
    """The preset's config and voxcpm model with random weights, its tokenizer written into ``directory``
    (under ``torch.device("meta")`` it costs no memory: how the tests check every preset's dimensions)."""
    from transformers import LlamaTokenizerFast

    preset = PRESETS[preset_name]
    config = _config(preset, preset.vocab_size or write_tokenizer(directory), dtype or preset.dtype)
    model_cls, config_cls, vae_cls = _model_classes(preset.architecture)
    parsed = config_cls.model_validate(config)
    vae = vae_cls(config=parsed.audio_vae_config)
    return config, model_cls(parsed, LlamaTokenizerFast.from_pretrained(str(directory)), vae, device="cpu")


def build(
    preset_name: SyntheticPreset, out: Path, seed: int = 0, overwrite: bool = True, dtype: str | None = None
) -> Path:
    """Write a loadable checkpoint directory for ``preset_name`` at ``out``.

    The files are written beside ``out`` and moved into place in one rename, so a replica that
    starts while another is building never loads a half-written checkpoint.
    """
    import torch
    from safetensors.torch import save_file

    preset = PRESETS[preset_name]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        torch.manual_seed(seed)
        config, model = instantiate(preset_name, staging, dtype)
        vae = model.audio_vae
        with torch.no_grad():
            # Always "continue": the stop logit trails by a fixed margin whatever the hidden state.
            model.stop_proj.weight.zero_()
            model.stop_proj.bias.fill_(1.0)
            model.stop_head.weight.zero_()
            model.stop_head.weight[0].fill_(
                STOP_CONTINUE_LOGIT / preset.lm_hidden / torch.nn.functional.silu(torch.tensor(1.0))
            )
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("audio_vae.")}
        save_file(state, str(staging / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(staging / "audiovae.safetensors"))
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        (staging / "SYNTHETIC.md").write_text(
            f"Synthetic checkpoint `{preset_name}` (random weights, seed {seed}) written by "
            "serve_app.model.synthetic.\n"
            "It speaks noise. Its stop head always continues, so utterances run to voxcpm's length cap.\n"
        )
        if overwrite and out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except OSError:
        if overwrite or not (out / "model.safetensors").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def ensure(preset_name: SyntheticPreset, out: Path) -> Path:
    """Build the checkpoint unless a complete one is already at ``out``."""
    if not (Path(out) / "model.safetensors").exists():
        build(preset_name, out, overwrite=False)  # another replica may win the race: that is fine
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: the preset's")
    args = parser.parse_args()
    print(build(args.preset, args.out, seed=args.seed, dtype=args.dtype))


if __name__ == "__main__":
    main()
