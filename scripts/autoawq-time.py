"""Time AutoAWQ 0.2.9 on the CPU for the job `make bench` times: SmolLM2-135M, AWQ group 64,
32 x 512 c4 calibration tokens (the same bundled c4 text, cut into 512-token blocks here).

Usage (a venv with autoawq==0.2.9, transformers==4.55.4, numpy<2, datasets==2.21.0,
pandas==2.2.3, pyarrow==17.0.0; torch from PyPI):
    python scripts/autoawq-time.py fixtures/smollm2-hf calib_data/build/c4.parquet
Prints the wall time of model.quantize(). Nothing is saved: AutoAWQ 0.2.9's CPU path corrupts the
weights (awq-reference §10), so only its time is comparable.
"""
import sys, time
import pyarrow.parquet as pq
import torch
from awq import AutoAWQForCausalLM
from transformers import AutoTokenizer

model_dir, parquet = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(model_dir)
ids = []
for text in pq.read_table(parquet).column("text").to_pylist():
    ids += tok.encode(text)
    if len(ids) >= 32 * 512:
        break
blocks = [ids[i * 512:(i + 1) * 512] for i in range(32)]
model = AutoAWQForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, device_map="cpu")
t0 = time.time()
model.quantize(tok, quant_config={"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"},
               calib_data=blocks, max_calib_samples=32, max_calib_seq_len=512)
dt = time.time() - t0
print(f"autoawq 0.2.9 quantize SmolLM2 g64 32x512 on CPU: {dt:.1f} s ({dt / 60:.1f} min, {dt / 30:.1f} s per layer)")
