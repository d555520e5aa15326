"""Tiny random-weight diffusers pipelines of each family the local engine runs, built offline from
configs (tokenizers from in-memory vocabularies) and saved with `save_pretrained`, so tests load them
through the engine's real `from_pretrained` code. Each runs a step in milliseconds on a CPU.

The Qwen-Image edit families are not built: their processor needs torchvision, which is not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (byte-level BPE vocabularies)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(extra)) for b in range(256)]


def clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": len(symbols) + index for index, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def clip_text_encoder(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    return CLIPTextModel(config)


def stable_diffusion(pix2pix: bool) -> Any:
    """Stable Diffusion 1.x text-to-image (native 32×32), or InstructPix2Pix."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=8 if pix2pix else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )
    tokenizer = clip_tokenizer()
    cls: Any = StableDiffusionInstructPix2PixPipeline if pix2pix else StableDiffusionPipeline
    return cls(
        unet=unet,
        vae=vae,
        scheduler=EulerDiscreteScheduler(steps_offset=1),
        text_encoder=clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def flux_kontext() -> Any:
    """FLUX.1 Kontext: one reference, or text-to-image (native 32×32)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(code), -2.0 - index) for index, code in enumerate(range(32, 127))]
    t5_tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        down_block_types=["DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D"],
    )
    tokenizer = clip_tokenizer()
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def flux2_klein() -> Any:
    """FLUX.2 klein (step-distilled): several references, or text-to-image (native 64×64)."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    )
    tokenizer = Qwen2Tokenizer(
        vocab={symbol: index for index, symbol in enumerate(byte_symbols())}, merges=[], model_max_length=512
    )
    tokenizer.chat_template = CHATML
    encoder = Qwen3ForCausalLM(
        Qwen3Config(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=max(512, len(tokenizer)),
        )
    )
    vae = AutoencoderKLFlux2(
        sample_size=64,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )


BUILDERS: dict[str, Callable[[], Any]] = {
    "sd": lambda: stable_diffusion(pix2pix=False),
    "pix2pix": lambda: stable_diffusion(pix2pix=True),
    "kontext": flux_kontext,
    "klein": flux2_klein,
}


def save_tiny_pipelines(root: Path, only: tuple[str, ...] = tuple(BUILDERS)) -> dict[str, Path]:
    """The tiny pipelines named in `only` (all by default) saved under `root/<name>`, seeded so each
    build is the same."""
    import torch

    saved = {}
    for name in only:
        build = BUILDERS[name]
        torch.manual_seed(0)
        build().save_pretrained(root / name)
        saved[name] = root / name
    return saved
