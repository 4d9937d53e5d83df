"""Perplexity of a transformers-style causal LM over the first N windows of S tokens of a text:
the windows `awqc eval --raw-text FILE --seqlen S --windows N` scores (no BOS added, each window
scored on its own, every token after the first predicted). Shared by the Python sides of
scripts/peer-load.sh (AutoAWQ) and scripts/hf-engine-check.sh (HF transformers)."""
import math

import torch


def windows(tok, text_path, seqlen=512, nwin=32):
    """The text's token ids as `[nwin, seqlen]` (an error if the text is too short)."""
    ids = tok(open(text_path, encoding="utf-8").read(), return_tensors="pt").input_ids[0]
    if ids.numel() < seqlen * nwin:
        raise SystemExit(f"{text_path}: {ids.numel()} tokens, {seqlen * nwin} needed")
    return ids[: seqlen * nwin].view(nwin, seqlen)


def perplexity(model, wins, batch):
    """exp(mean NLL) of `model(x).logits` over the windows, `batch` windows per forward."""
    nll = 0.0
    with torch.no_grad():
        for i in range(0, wins.shape[0], batch):
            x = wins[i:i + batch]
            logits = model(x).logits.float()
            nll += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
    return math.exp(nll / (wins.shape[0] * (wins.shape[1] - 1)))
