"""Screen SASRec recipes fast on a lent GPU with an independent PyTorch copy of our SASRec.

Not part of the pipeline, and nothing imports it: the project's models are TensorFlow, and the
lent GPU machine has PyTorch but no TensorFlow. This script reimplements, in PyTorch, exactly
the recipe of our best SASRec on the sequence layout (``benchmarks/runs/
sasrec_reference_3blocks_init.json``: SASRec's reference block, positions counted from the
oldest item of a chunk, ``N(0, 0.02)`` weights, tied and ``sqrt(d)``-scaled item embeddings,
full softmax, Adam 1e-3, batch 128, chunks of up to 201 items overlapping by one, so every
training interaction is a label once an epoch; item ids only, no genres, which BENCHMARKS.md
measured to make no difference). Its only job is to say which variants (dropout, depth, width,
heads, cosine scoring) are worth the hours a TensorFlow run takes on the CPU; every figure we
report comes from ``benchmarks/ml1m.py``.

Leave-one-out on ML-1M: each user's last item is the test target, the one before it the
validation target, the rest the training history. Ranking is over every item of the corpus,
with the user's seen items ranked and excluded (both reported). The epoch is selected on
validation NDCG@10 with seen items excluded (patience 10), as ``benchmarks/ml1m.py
--selection-metric ndcg@10 --select-seen-excluded`` does, and test is read at that epoch.

    python benchmarks/torch_sasrec_probe.py --data sequences.txt.gz --output results.jsonl \\
        --grid baseline,dropout0.2 --seeds 0,1 --parallel 8

Each finished run appends one JSON line to ``--output``; a run's line also carries its
validation curve (epoch, seconds, Recall@10, NDCG@10). ``--output FILE --summarize`` prints a
results file as a markdown table (means over the seeds that converged).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One SASRec variant; the defaults are our best TensorFlow run's recipe."""

    embedding_dim: int = 64
    num_blocks: int = 3
    num_heads: int = 1
    dropout: float = 0.1
    learning_rate: float = 1e-3
    batch_size: int = 128
    history_length: int = 200
    normalize: bool = False      # cosine scores (HSTU's recipe)
    temperature: float = 1.0     # training logits divided by it
    weight_decay: float = 0.0
    adam_beta2: float = 0.999    # Keras's default, which our TensorFlow runs use
    max_epochs: int = 200
    patience: int = 10


GRID: Dict[str, Recipe] = {
    "baseline": Recipe(),
    "dropout0.2": Recipe(dropout=0.2),
    "dropout0.3": Recipe(dropout=0.3),
    "blocks2": Recipe(num_blocks=2),
    "blocks4_dropout0.2": Recipe(num_blocks=4, dropout=0.2),
    "blocks6_dropout0.2": Recipe(num_blocks=6, dropout=0.2),
    "dim128_dropout0.2": Recipe(embedding_dim=128, dropout=0.2),
    "dim256_dropout0.2": Recipe(embedding_dim=256, dropout=0.2),
    "dim128_blocks4_dropout0.2": Recipe(embedding_dim=128, num_blocks=4, dropout=0.2),
    "dim128_heads2_dropout0.2": Recipe(embedding_dim=128, num_heads=2, dropout=0.2),
    "heads2": Recipe(num_heads=2),
    "cosine_t0.05": Recipe(normalize=True, temperature=0.05),
    "cosine_t0.05_dropout0.2": Recipe(normalize=True, temperature=0.05, dropout=0.2),
    "blocks4_cosine_t0.05_dropout0.2": Recipe(num_blocks=4, normalize=True, temperature=0.05,
                                              dropout=0.2),
    "batch64_lr0.002": Recipe(batch_size=64, learning_rate=2e-3),
    "beta2_0.98": Recipe(adam_beta2=0.98),
    "lr0.002_dropout0.2": Recipe(learning_rate=2e-3, dropout=0.2),
}


# ----------------------------------------------------------------------------- data

def read_sequences(path: str) -> List[List[int]]:
    """``user item item ...`` lines (oldest first) -> item sequences with ids ``1..N``."""
    raw = []
    with gzip.open(path, "rt") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4:
                raw.append([int(x) for x in fields[1:]])
    vocabulary = {item: i + 1 for i, item in enumerate(sorted({i for s in raw for i in s}))}
    return [[vocabulary[i] for i in s] for s in raw]


def training_chunks(histories: Sequence[Sequence[int]], length: int) -> List[List[int]]:
    """Chunks of up to ``length + 1`` items, newest first, overlapping by one: every item but a
    history's first is a label exactly once.

    ``components.preprocessing.sequences.chunk_bounds`` restated: the GPU machine has no
    TensorFlow, which that module imports; ``tests/benchmarks/test_torch_sasrec_probe.py`` holds
    the two equal."""
    chunks = []
    for history in histories:
        end = len(history)
        while end > 1:
            start = max(0, end - (length + 1))
            chunks.append(list(history[start:end]))
            end = start + 1
    return chunks


def right_padded(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int64)
    for r, row in enumerate(rows):
        row = list(row)[-length:]
        out[r, :len(row)] = row
    return out


# ----------------------------------------------------------------------------- model

def build_model(recipe: Recipe, num_items: int):
    import torch
    from torch import nn

    class Block(nn.Module):
        """SASRec's reference block: ``q = LN(x); x = q + MHA(q, x, x); x = LN(x);
        x += FFN(x)`` with a ReLU feed-forward and dropout after both of its layers."""

        def __init__(self, d: int, heads: int, p: float):
            super().__init__()
            self.attention_norm = nn.LayerNorm(d, eps=1e-6)
            self.attention = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
            self.ffn_norm = nn.LayerNorm(d, eps=1e-6)
            self.ffn_in, self.ffn_out = nn.Linear(d, d), nn.Linear(d, d)
            self.dropout = nn.Dropout(p)

        def forward(self, x, causal, keep):
            q = self.attention_norm(x)
            x = q + self.attention(q, x, x, attn_mask=causal, need_weights=False)[0]
            x = self.ffn_norm(x)
            x = x + self.dropout(self.ffn_out(self.dropout(torch.relu(self.ffn_in(x)))))
            return x * keep

    class SASRec(nn.Module):
        def __init__(self):
            super().__init__()
            d = recipe.embedding_dim
            self.items = nn.Embedding(num_items + 1, d, padding_idx=0)
            self.positions = nn.Embedding(recipe.history_length, d)
            self.blocks = nn.ModuleList([Block(d, recipe.num_heads, recipe.dropout)
                                         for _ in range(recipe.num_blocks)])
            self.final_norm = nn.LayerNorm(d, eps=1e-6)
            self.input_dropout = nn.Dropout(recipe.dropout)
            for name, weight in self.named_parameters():
                if "norm" in name:
                    continue
                if name.endswith("bias"):
                    nn.init.zeros_(weight)
                else:
                    nn.init.normal_(weight, std=0.02)
            with torch.no_grad():
                self.items.weight[0].zero_()

        def forward(self, history):
            """``[batch, L]`` right-padded ids -> ``[batch, L, d]`` causal states."""
            length = history.shape[1]
            keep = (history != 0).unsqueeze(-1).float()
            positions = torch.arange(length, device=history.device)
            x = self.items(history) * math.sqrt(recipe.embedding_dim) + self.positions(positions)
            x = self.input_dropout(x * keep)
            causal = torch.triu(torch.ones(length, length, dtype=torch.bool,
                                           device=history.device), 1)
            for block in self.blocks:
                x = block(x, causal, keep)
            return self.final_norm(x) * keep

        def candidates(self):
            vectors = self.items.weight[1:]
            return nn.functional.normalize(vectors, dim=-1) if recipe.normalize else vectors

        def queries(self, states):
            return nn.functional.normalize(states, dim=-1) if recipe.normalize else states

    return SASRec()


# ----------------------------------------------------------------------------- one run

def seen_mask(histories: Sequence[Sequence[int]], num_items: int, device):
    """``[users, N]`` bool, True on the items of each user's history (item ``i`` at ``i - 1``)."""
    import torch
    rows = np.concatenate([np.full(len(h), u) for u, h in enumerate(histories)])
    cols = np.concatenate([np.asarray(h) - 1 for h in histories])
    mask = torch.zeros(len(histories), num_items, dtype=torch.bool, device=device)
    mask[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = True
    return mask


def evaluate(model, inputs: np.ndarray, lengths: np.ndarray, targets: np.ndarray, seen,
             device, batch: int = 1024) -> Dict[str, float]:
    """Recall@10 / NDCG@10 / Recall@20 over every item, seen items ranked and excluded.

    ``seen``: ``[users, N]`` bool from :func:`seen_mask`; a target is never among them (ML-1M
    has no repeats), but it is unmasked anyway so that it is always ranked."""
    import torch
    model.eval()
    hits = {"ranked": [], "excluded": []}
    with torch.no_grad():
        candidates = model.candidates()
        for lo in range(0, len(inputs), batch):
            history = torch.from_numpy(inputs[lo:lo + batch]).to(device)
            rows = torch.arange(len(history), device=device)
            last = torch.from_numpy(lengths[lo:lo + batch] - 1).to(device)
            states = model(history)
            query = model.queries(states[rows, last])
            scores = query @ candidates.T                                  # [b, N], item i+1
            target = torch.from_numpy(targets[lo:lo + batch] - 1).to(device)
            target_score = scores.gather(1, target[:, None])
            hits["ranked"].append((scores > target_score).sum(1).cpu().numpy())
            mask = seen[lo:lo + batch].clone()
            mask[rows, target] = False
            excluded = scores.masked_fill(mask, -float("inf"))
            hits["excluded"].append((excluded > target_score).sum(1).cpu().numpy())
    model.train()
    out = {}
    for key, parts in hits.items():
        rank = np.concatenate(parts)
        out[f"recall@10_{key}"] = float(np.mean(rank < 10))
        out[f"ndcg@10_{key}"] = float(np.mean(np.where(rank < 10, 1 / np.log2(rank + 2), 0)))
        out[f"recall@20_{key}"] = float(np.mean(rank < 20))
    return out


def run(name: str, recipe: Recipe, seed: int, data: str, deadline: float) -> Dict:
    import torch
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    sequences = read_sequences(data)
    num_items = max(max(s) for s in sequences)
    L = recipe.history_length
    histories = [s[:-2] for s in sequences]
    chunks = training_chunks(histories, L)
    chunk_array = right_padded(chunks, L + 1)
    validation_in = [h for h in histories]
    test_in = [s[:-1] for s in sequences]
    split = {
        "validation": (right_padded(validation_in, L),
                       np.array([min(len(h), L) for h in validation_in]),
                       np.array([s[-2] for s in sequences]),
                       seen_mask(validation_in, num_items, device)),
        "test": (right_padded(test_in, L), np.array([min(len(h), L) for h in test_in]),
                 np.array([s[-1] for s in sequences]),
                 seen_mask(test_in, num_items, device)),
    }
    model = build_model(recipe, num_items).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate,
                                 betas=(0.9, recipe.adam_beta2), eps=1e-7,
                                 weight_decay=recipe.weight_decay)
    curve, best, best_state, stale, train_seconds = [], None, None, 0, 0.0
    stopped = "max_epochs"
    for epoch in range(1, recipe.max_epochs + 1):
        if time.time() > deadline:
            stopped = "deadline"
            break
        start = time.time()
        order = rng.permutation(len(chunk_array))
        for lo in range(0, len(order), recipe.batch_size):
            batch = torch.from_numpy(chunk_array[order[lo:lo + recipe.batch_size]]).to(device)
            width = int((batch != 0).sum(1).max())
            history, labels = batch[:, :width - 1], batch[:, 1:width]
            states = model(history)
            valid = labels != 0
            logits = model.queries(states[valid]) @ model.candidates().T / recipe.temperature
            loss = torch.nn.functional.cross_entropy(logits, labels[valid] - 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.items.weight[0].zero_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.time() - start
        metrics = evaluate(model, *split["validation"], device)
        curve.append({"epoch": epoch, "train_seconds": round(train_seconds, 1),
                      "loss": loss.item(), **{k: round(v, 4) for k, v in metrics.items()}})
        score = metrics["ndcg@10_excluded"]
        if best is None or score > best["ndcg@10_excluded"]:
            best, stale = {"epoch": epoch, **metrics}, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= recipe.patience:
                stopped = "early_stopping"
                break
    if best_state is None:
        raise SystemExit(f"{name} seed {seed}: the deadline passed before its first epoch")
    model.load_state_dict(best_state)
    test = evaluate(model, *split["test"], device)
    return {"name": name, "seed": seed, "recipe": dataclasses.asdict(recipe),
            "device": str(device), "stopped": stopped, "epochs_run": len(curve),
            "best_epoch": best["epoch"], "validation": best, "test": test, "curve": curve,
            "train_seconds": round(train_seconds, 1)}


def summarize(path: str) -> str:
    """A markdown table of a results file: one row per recipe, its seeds' validation (seen items
    excluded, the selection metric's evaluation) and test figures at the selected epoch.

    A run cut by the deadline has not converged; it is left out of the means (a recipe with cut
    runs only shows its longest run in parentheses). Where
    a recipe and seed ran twice, the run with more epochs is kept."""
    runs: Dict[Tuple[str, int], Dict] = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            key = (r["name"], r["seed"])
            if key not in runs or r["epochs_run"] > runs[key]["epochs_run"]:
                runs[key] = r
    lines = ["| recipe | seeds (best epoch) | validation R@10 / NDCG@10, seen excl. | "
             "test R@10 / NDCG@10, seen excl. | test R@10 / NDCG@10, seen ranked |",
             "|---|---|---|---|---|"]

    def pair(rows, split, evaluation):
        if not rows:
            return "-"
        recall = np.mean([r[split][f"recall@10_{evaluation}"] for r in rows])
        ndcg = np.mean([r[split][f"ndcg@10_{evaluation}"] for r in rows])
        return f"{recall:.4f} / {ndcg:.4f}"

    for name in sorted({n for n, _ in runs}, key=lambda n: (n != "baseline", n)):
        rows = [runs[k] for k in sorted(runs) if k[0] == name]
        done = [r for r in rows if r["stopped"] != "deadline"]
        seeds = ", ".join(f"{r['seed']} ({r['best_epoch']}"
                          + (", cut by the deadline)" if r["stopped"] == "deadline" else ")")
                          for r in rows)
        if done:
            cells = [pair(done, "validation", "excluded"), pair(done, "test", "excluded"),
                     pair(done, "test", "ranked")]
        else:  # only cut runs: their longest one, marked
            longest = [max(rows, key=lambda r: r["epochs_run"])]
            cells = [f"({pair(longest, split, evaluation)}, seed {longest[0]['seed']} cut)"
                     for split, evaluation in [("validation", "excluded"), ("test", "excluded"),
                                               ("test", "ranked")]]
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ML-1M sequences.txt.gz")
    parser.add_argument("--output", required=True, help="JSON lines, one per finished run")
    parser.add_argument("--summarize", action="store_true",
                        help="print --output's runs as a markdown table and exit (no PyTorch)")
    parser.add_argument("--grid", default="baseline", help=f"comma list of {sorted(GRID)}")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--deadline-seconds", type=float, default=1e9,
                        help="no run starts an epoch after this many seconds from now")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # name:seed, a worker
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.output))
        return
    if not args.data:
        parser.error("--data is required to train")
    deadline = time.time() + args.deadline_seconds
    if args.one:
        name, seed = args.one.rsplit(":", 1)
        recipe = GRID[name]
        if args.max_epochs:
            recipe = dataclasses.replace(recipe, max_epochs=args.max_epochs)
        result = run(name, recipe, int(seed), args.data, deadline)
        with open(args.output, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"{name} seed {seed}: best epoch {result['best_epoch']} "
              f"({result['stopped']} after {result['epochs_run']}), validation excl "
              f"{result['validation']['recall@10_excluded']:.4f}/"
              f"{result['validation']['ndcg@10_excluded']:.4f}, test excl "
              f"{result['test']['recall@10_excluded']:.4f}/"
              f"{result['test']['ndcg@10_excluded']:.4f}, ranked "
              f"{result['test']['recall@10_ranked']:.4f}/{result['test']['ndcg@10_ranked']:.4f}"
              f", {result['train_seconds']} s", flush=True)
        return
    names = args.grid.split(",")
    unknown = [n for n in names if n not in GRID]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {sorted(GRID)}")
    jobs = [f"{n}:{s}" for s in args.seeds.split(",") for n in names]
    running: List[Tuple[str, subprocess.Popen]] = []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            job = jobs.pop(0)
            command = [sys.executable, __file__, "--data", args.data, "--output", args.output,
                       "--one", job, "--deadline-seconds", str(max(1.0, deadline - time.time()))]
            if args.max_epochs:
                command += ["--max-epochs", str(args.max_epochs)]
            running.append((job, subprocess.Popen(command)))
        time.sleep(1.0)
        for job, process in list(running):
            if process.poll() is not None:
                running.remove((job, process))
                if process.returncode:
                    print(f"{job} failed with exit status {process.returncode}", flush=True)


if __name__ == "__main__":
    main()
