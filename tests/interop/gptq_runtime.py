"""Load a GPTQ or AWQ folder as a user would (transformers with GPTQModel's CPU kernels), run a
forward pass and a greedy generation, and save what came out.

  python3 gptq_runtime.py FOLDER OUT.pt

OUT.pt holds `logits` (float32, the forward pass on IDS), `tokens` (the greedy continuation of
IDS) and `kernels` (the class name of every quantized module). Run in its own process by
test_gptq.py: importing gptqmodel sets environment variables and patches transformers, which the
other tests should not see, and a kernel that aborts fails one test instead of the session."""
import sys

import torch
from transformers import AutoModelForCausalLM

IDS = [[1, 5, 9, 42, 7, 100, 3, 77]]
NEW_TOKENS = 8


def main(folder, out):
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.float16)
    kernels = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "qweight")})
    ids = torch.tensor(IDS)
    with torch.no_grad():
        logits = model(ids).logits.float()
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=0)[0, ids.shape[1]:]
    torch.save({"logits": logits, "tokens": tokens, "kernels": kernels}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
