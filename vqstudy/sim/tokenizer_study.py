"""The action-tokenizer study on Meta-World (issue 9): every tokenizer trained on the demonstrations,
measured open loop on held-out demonstration episodes and in closed loop on held-out initial states.

For each tokenizer spec and seed (the seed sets the episode split of the demonstrations, the
tokenizer's weights, batch order and quantizer seed, and the held-out initial states of the rollouts):
- fit on the train split's normalized chunks (`fit_tokenizer`, FAST: `FastTokenizer.fit` first),
  keeping the utilization curve over training;
- held out: the validation episodes cut into consecutive chunks, encoded and decoded in action units:
  MSE overall and per phase, bits per chunk (nominal, effective), utilization, tokens per chunk;
- closed loop: `TokenizedSource(ExpertChunkSource(H), tokenizer)` (the tokenizer's floor: the expert's
  chunks pass through the tokenizer before execution), success with Wilson intervals, paired with the
  untokenized `ExpertChunkSource(H)` on the same initial states;
- phases (after arXiv 2509.05614), from the MEASURED hand speed, never from the commanded deltas: a
  step is *coarse* when the hand speed exceeds `speed_quantile` of the training demonstrations' speeds
  (`observation.hand_vel`), else *fine*. Open loop the error is split by the recorded hand_vel; in
  closed loop (`phase_split` specs) `PhaseTokenizedSource` tokenizes only the chunks that start in one
  phase, the hand speed read from the observation as |obs[0:3] - obs[18:21]| / dt (this step's and the
  previous step's hand position), and executes the others exactly.

`run_study(config)` runs the jobs (resumable: one JSON per job under `work_dir`), `write_report`
writes the tables, JSON and plots. Config merge order: dataclass defaults <- YAML <- `--set`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from vqstudy.actions.data.lerobot import load_lerobot
from vqstudy.actions.data.trajectories import TrajectoryDataConfig, build_trajectory_datasets
from vqstudy.actions.export import ActionTokenizer
from vqstudy.actions.fast import FastTokenizer
from vqstudy.actions.metrics import chunk_bits, chunk_episode
from vqstudy.actions.registry import TOKENIZER_KINDS
from vqstudy.actions.train import ActionTrainConfig, fit_tokenizer, make_tokenizer
from vqstudy.config import from_dict, load_config, to_dict
from vqstudy.files import write_atomic
from vqstudy.quantize import usage_of
from vqstudy.sim.env import ACTION_DIM, MetaWorldEnv, resolve_tasks
from vqstudy.sim.rollout import RolloutConfig, evaluate, wilson_interval
from vqstudy.sim.sources import ActionSource, ExpertChunkSource, SourceBatch, TokenizedSource

logger = logging.getLogger(__name__)

HAND_POS = slice(0, 3)
"""Hand xyz in a Meta-World observation."""
PREV_HAND_POS = slice(18, 21)
"""The previous step's hand xyz in a Meta-World observation."""
REFERENCE = "expert_chunks"
"""Family name of the untokenized expert chunks (the ceiling each tokenizer is paired with)."""
Phase = Literal["coarse", "fine"]


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


@dataclass
class TokenizerSpec:
    """One tokenizer of the study."""

    family: str
    """Curve it belongs to on the rate-vs-success plot (vq, hvq, bins, fsq, rvq, fast)."""
    kind: str
    """Registry kind (vqstudy.actions.registry.TOKENIZER_KINDS)."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Fields of the kind's config dataclass (horizon and action_dim come from the study)."""
    horizon: int = 8
    """H, steps per chunk."""
    seeds: list[int] | None = None
    """Seeds of this tokenizer; None: the study's seeds."""
    phase_split: bool = False
    """Also run closed loop with only coarse-phase or only fine-phase chunks tokenized."""

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"TokenizerSpec.kind ({self.kind!r}) must be one of {sorted(TOKENIZER_KINDS)}")
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"TokenizerSpec.horizon ({self.horizon!r}) must be an integer >= 1")
        if not isinstance(self.fields, dict):
            raise ValueError(f"TokenizerSpec.fields ({self.fields!r}) must be a mapping")


@dataclass
class TokenizerStudyConfig:
    """The study. Merge order: dataclass defaults <- YAML (--config) <- `--set` overrides."""

    name: str = "metaworld_tokenizers"
    """Study name (report title)."""
    data: str = "runs/metaworld_mt10"
    """Demonstrations written by `vqstudy data make metaworld` (LeRobot layout)."""
    tasks: list[str] = field(default_factory=lambda: ["mt10"])
    """Tasks of the closed-loop rollouts (mt10, mt50 or task names)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds: episode split, tokenizer init/batch order/quantizer, held-out initial states."""
    val_fraction: float = 0.2
    """Share of demonstration episodes held out for the open-loop error."""
    n: int = 20
    """Closed-loop rollouts per task, tokenizer and seed."""
    max_steps: int = 300
    """Steps before a rollout counts as failed."""
    num_envs: int = 5
    """Simulators per task in lockstep."""
    speed_quantile: float = 0.5
    """Coarse phase: hand speed above this quantile of the training demonstrations' hand speeds."""
    train: ActionTrainConfig = field(default_factory=lambda: ActionTrainConfig(steps=600, lr=2e-3, log_every=50))
    """Tokenizer training (train.seed is replaced by each study seed)."""
    tokenizers: dict[str, Any] = field(default_factory=dict)
    """Name -> TokenizerSpec fields (family, kind, fields, horizon, seeds, phase_split)."""
    headline: str = "vq_k256"
    """Tokenizer every other one of the same horizon is also paired with in the report (same seeds and states)."""
    workers: int = 1
    """Processes running jobs (one job = one tokenizer and seed, or one reference)."""
    work_dir: str = "runs/metaworld_tokenizers"
    """One JSON per finished job (a rerun skips them), tokenizers saved under tokenizers/."""

    def __post_init__(self) -> None:
        for name, low in (("n", 1), ("max_steps", 1), ("num_envs", 1), ("workers", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TokenizerStudyConfig.{name} ({value!r}) must be an integer >= {low}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"TokenizerStudyConfig.seeds ({self.seeds!r}) must be a non-empty list of integers >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"TokenizerStudyConfig.val_fraction ({self.val_fraction}) must be in (0, 1)")
        if not 0.0 < self.speed_quantile < 1.0:
            raise ValueError(f"TokenizerStudyConfig.speed_quantile ({self.speed_quantile}) must be in (0, 1)")
        if isinstance(self.train, dict):
            self.train = from_dict(ActionTrainConfig, self.train, "TokenizerStudyConfig.train")
        if not self.tokenizers:
            raise ValueError("TokenizerStudyConfig.tokenizers ({}) must name at least one tokenizer")
        self.tokenizers = {
            name: spec if isinstance(spec, TokenizerSpec)
            else from_dict(TokenizerSpec, spec, f"TokenizerStudyConfig.tokenizers.{name}")
            for name, spec in self.tokenizers.items()}
        for name, spec in self.tokenizers.items():
            # the kind's own validation, before any job runs
            make_tokenizer(spec.kind, spec.fields, spec.horizon, ACTION_DIM, 0)

    def spec_seeds(self, spec: TokenizerSpec) -> list[int]:
        return list(spec.seeds) if spec.seeds is not None else list(self.seeds)


def load_study_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TokenizerStudyConfig:
    """Defaults <- YAML file <- `overrides` (nested dicts)."""
    return load_config(TokenizerStudyConfig, path, overrides)


class Job(NamedTuple):
    """One unit of work: a tokenizer (or the reference, name = REFERENCE) at one horizon and seed."""

    name: str
    horizon: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.name}_h{self.horizon}_s{self.seed}" if self.name == REFERENCE else f"{self.name}_s{self.seed}"


def study_tasks(cfg: TokenizerStudyConfig) -> list[str]:
    """The task names of `cfg.tasks`, each item resolved like the CLI's --tasks (mt10, mt50, names)."""
    return list(dict.fromkeys(t for item in cfg.tasks for t in resolve_tasks(item)))


def study_jobs(cfg: TokenizerStudyConfig) -> list[Job]:
    """Every tokenizer x its seeds, and the reference at every (horizon, seed) some tokenizer uses."""
    jobs = [Job(name, spec.horizon, s) for name, spec in cfg.tokenizers.items() for s in cfg.spec_seeds(spec)]
    refs = sorted({(j.horizon, j.seed) for j in jobs})
    return [Job(REFERENCE, h, s) for h, s in refs] + jobs


# ------------------------------------------------------------------------------------------------
# Phases from the measured hand speed
# ------------------------------------------------------------------------------------------------


def obs_hand_speed(obs: np.ndarray, dt: float) -> np.ndarray:
    """(B, 39) Meta-World observations -> (B,) hand speed |pos - previous pos| / dt (m/s)."""
    return np.linalg.norm(obs[:, HAND_POS] - obs[:, PREV_HAND_POS], axis=1) / dt


class PhaseTokenizedSource:
    """Chunks of `inner`, passed through `tokenizer` only for the rows whose current hand speed puts them
    in phase `tokenize` (coarse: speed > threshold); the other rows' chunks are executed exactly."""

    def __init__(self, inner: ActionSource, tokenizer: Any, threshold: float, tokenize: Phase,
                 name: str | None = None) -> None:
        if tokenize not in ("coarse", "fine"):
            raise ValueError(f"tokenize ({tokenize!r}) must be 'coarse' or 'fine'")
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold ({threshold}) must be a finite speed >= 0")
        if tokenizer.horizon != inner.horizon:
            raise ValueError(f"tokenizer horizon ({tokenizer.horizon}) does not match the source's ({inner.horizon})")
        self.inner, self.tokenizer, self.threshold, self.tokenize = inner, tokenizer, threshold, tokenize
        self.horizon = inner.horizon
        self.name = name or f"{inner.name}+tokenizer_{tokenize}_only"
        self._sq_err, self._count, self._rows, self._chunks = 0.0, 0, 0, 0

    def __call__(self, batch: SourceBatch) -> np.ndarray:
        chunks = self.inner(batch)  # (B, H, 4)
        coarse = obs_hand_speed(batch.obs, batch.envs[0].dt) > self.threshold  # (B,)
        rows = coarse if self.tokenize == "coarse" else ~coarse
        out = chunks.copy()
        if rows.any():
            part = torch.as_tensor(chunks[rows], dtype=torch.float32)  # (b, H, 4)
            decoded = self.tokenizer.decode(self.tokenizer.encode(part)).numpy().astype(np.float32)
            self._sq_err += float(((decoded - chunks[rows]) ** 2).sum())
            self._count += decoded.size
            out[rows] = decoded
        self._rows += int(rows.sum())
        self._chunks += len(rows)
        return out

    def stats(self) -> dict[str, float]:
        """MSE of the tokenized chunks (action units) and the share of chunks that were tokenized."""
        return {"chunk_mse": self._sq_err / max(self._count, 1), "tokenized_fraction": self._rows / max(self._chunks, 1)}


# ------------------------------------------------------------------------------------------------
# One job
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _episodes(path: str) -> tuple:
    return tuple(load_lerobot(path).episodes)


@lru_cache(maxsize=1)
def _dt(task: str) -> float:
    env = MetaWorldEnv(task)
    try:
        return env.dt
    finally:
        env.close()


_ENV_CACHE: dict[str, list[MetaWorldEnv]] = {}


def _speed(episode: Any) -> np.ndarray:
    if "observation.hand_vel" not in episode.obs:
        raise ValueError(f"{episode.where}: no 'observation.hand_vel' column (record with `vqstudy data make metaworld`)")
    return np.linalg.norm(episode.obs["observation.hand_vel"], axis=1)  # (T,)


def phase_threshold(train_episodes: list[Any], quantile: float) -> float:
    """The `quantile` of the measured hand speeds |hand_vel| over every training step."""
    return float(np.quantile(np.concatenate([_speed(e) for e in train_episodes]), quantile))


def speed_agreement(train_episodes: list[Any], threshold: float, dt: float) -> float:
    """Share of training steps put in the same phase by |hand_vel| and by |obs[0:3] - obs[18:21]| / dt."""
    same = total = 0
    for e in train_episodes:
        by_vel = _speed(e) > threshold
        by_obs = obs_hand_speed(e.obs["observation.state"], dt) > threshold
        same += int((by_vel == by_obs).sum())
        total += len(by_vel)
    return same / max(total, 1)


@torch.no_grad()
def held_out_metrics(action_tok: ActionTokenizer, val_episodes: list[Any], threshold: float) -> dict[str, Any]:
    """Open-loop fidelity on consecutive chunks of the held-out episodes, in action units, with the error split
    by the measured hand speed (step level), bits and utilization of the ids."""
    h = action_tok.horizon
    sq, phases, ids_all, norm_sq = [], [], [], []
    for e in val_episodes:
        if len(e) < h:
            continue
        true = chunk_episode(torch.tensor(e.actions, dtype=torch.float32), h)  # (N, H, A)
        ids = action_tok.encode(true)
        pred = action_tok.decode(ids)
        sq.append(((pred - true) ** 2).reshape(-1, true.shape[-1]))  # (N*H, A)
        norm = action_tok.normalizer
        norm_sq.append(((norm.normalize(pred) - norm.normalize(true)) ** 2).reshape(-1))
        phases.append(torch.as_tensor(_speed(e)[: true.shape[0] * h] > threshold))
        ids_all.append(action_tok.codes_from_ids(ids))
    if not sq:
        raise ValueError(f"no held-out episode has >= {h} steps")
    err, coarse, codes = torch.cat(sq).double(), torch.cat(phases), torch.cat(ids_all)
    tok = action_tok.tokenizer
    out: dict[str, Any] = {
        "mse": float(err.mean()), "mse_per_dim": err.mean(dim=0).tolist(),
        "mse_normalized": float(torch.cat(norm_sq).double().mean()),
        "mse_coarse": float(err[coarse].mean()) if coarse.any() else math.nan,
        "mse_fine": float(err[~coarse].mean()) if (~coarse).any() else math.nan,
        "coarse_fraction": float(coarse.double().mean()), "val_chunks": int(codes.shape[0]),
    }
    if isinstance(tok, FastTokenizer):
        real = codes[codes != tok.pad_id]
        counts = tok.token_counts(codes).double()
        usage = usage_of(real, tok.vocab_size)
        tokens = float(counts.mean())
        out.update(tokens_per_chunk=tokens, tokens_per_chunk_max=int(counts.max()),
                   bits_nominal=tokens * math.log2(tok.vocab_size - 1),
                   bits_effective=tokens * math.log2(max(float(usage.perplexity), 1.0)),
                   utilization=float(usage.utilization), truncated_chunks=tok.truncated)
    else:
        bits = chunk_bits(codes, tok.token_groups(), tok.vocab_size)
        out.update(tokens_per_chunk=float(tok.num_tokens), bits_nominal=bits.nominal, bits_effective=bits.effective,
                   utilization=bits.utilization)
    return out


def _closed_loop(cfg: TokenizerStudyConfig, source: ActionSource, seed: int) -> dict[str, Any]:
    rollout = RolloutConfig(study_tasks(cfg), n=cfg.n, seed=seed, max_steps=cfg.max_steps,
                            num_envs=cfg.num_envs)
    result = evaluate(source, rollout, env_cache=_ENV_CACHE).to_dict()
    result["successes"] = [int(e["success"]) for e in result.pop("episodes")]  # (task, rollout) order
    return result


def run_job(cfg: TokenizerStudyConfig, job: Job) -> dict[str, Any]:
    """Train/measure/roll out one job; returns a JSON-able dict."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    if job.name == REFERENCE:
        loop = _closed_loop(cfg, ExpertChunkSource(job.horizon), job.seed)
        return {"job": job._asdict(), "key": job.key, "family": REFERENCE, "closed_loop": loop,
                "seconds": time.perf_counter() - start}
    spec = cfg.tokenizers[job.name]
    data_cfg = TrajectoryDataConfig(source="lerobot", paths=[cfg.data], horizon=spec.horizon, split="episode",
                                    val_fraction=cfg.val_fraction, seed=job.seed)
    data = build_trajectory_datasets(data_cfg, episodes=list(_episodes(cfg.data)))
    chunks = data.train.all_chunks()  # (N, H, A) normalized
    tok = make_tokenizer(spec.kind, spec.fields, spec.horizon, data.train.action_dim, job.seed)
    if isinstance(tok, FastTokenizer):
        tok.fit(chunks)
    fit = fit_tokenizer(tok, chunks, replace(cfg.train, seed=job.seed))
    action_tok = ActionTokenizer(tok, data.normalizer)
    action_tok.save_pretrained(Path(cfg.work_dir) / "tokenizers" / job.key)
    threshold = phase_threshold(data.train.episodes, cfg.speed_quantile)
    held = held_out_metrics(action_tok, data.val.episodes, threshold)
    trained_s = time.perf_counter() - start
    inner = ExpertChunkSource(spec.horizon)
    loop = _closed_loop(cfg, TokenizedSource(inner, action_tok, name=job.key), job.seed)
    phases = {}
    if spec.phase_split:
        for phase in ("coarse", "fine"):
            source = PhaseTokenizedSource(inner, action_tok, threshold, phase, name=f"{job.key}_{phase}_only")
            phases[phase] = _closed_loop(cfg, source, job.seed)
    return {
        "job": job._asdict(), "key": job.key, "family": spec.family, "kind": spec.kind, "fields": spec.fields,
        "vocab_size": tok.vocab_size, "num_tokens": tok.num_tokens, "train_chunks": int(chunks.shape[0]),
        "fit_seconds": fit.seconds, "curve": [p._asdict() for p in fit.curve], "held_out": held,
        "phase_threshold": threshold,
        "phase_agreement": speed_agreement(data.train.episodes, threshold, _dt(study_tasks(cfg)[0])),
        "closed_loop": loop, "phase_only": phases, "train_seconds": trained_s, "seconds": time.perf_counter() - start,
    }


def _job_path(cfg: TokenizerStudyConfig, job: Job) -> Path:
    return Path(cfg.work_dir) / "jobs" / f"{job.key}.json"


def _run_and_save(cfg: TokenizerStudyConfig, job: Job) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_job(cfg, job)
    write_atomic(_job_path(cfg, job), (json.dumps(result, indent=1) + "\n").encode())
    loop = result["closed_loop"]["overall"]
    logger.info("%s: %d/%d success, %.0f s", job.key, loop["successes"], loop["n"], result["seconds"])
    return result


def run_study(cfg: TokenizerStudyConfig, shard: tuple[int, int] = (0, 1)) -> list[dict[str, Any]]:
    """Run every job not finished yet (`workers` processes) and return all job results in job order.
    `shard=(i, m)`: run only jobs i, i + m, ... of the job list (independent processes sharing `work_dir`);
    then the results of the jobs finished so far are returned."""
    i, m = shard
    if not 0 <= i < m:
        raise ValueError(f"shard ({i}/{m}) must satisfy 0 <= i < m")
    jobs = study_jobs(cfg)
    jobs_by_seed = sorted(jobs, key=lambda j: j.seed)
    todo = [j for k, j in enumerate(jobs_by_seed) if k % m == i and not _job_path(cfg, j).exists()]
    logger.info("%d jobs, %d to run in shard %d/%d, %d workers", len(jobs), len(todo), i, m, cfg.workers)
    # seed by seed (references first), so an interrupted study has whole seeds of every tokenizer
    todo.sort(key=lambda j: j.seed)
    if cfg.workers == 1 or len(todo) <= 1:
        for job in todo:
            _run_and_save(cfg, job)
    else:
        import multiprocessing

        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run_and_save, cfg, job) for job in todo]
            for future in as_completed(futures):
                if future.exception() is not None:  # fail fast: queued jobs are dropped, running ones finish
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise future.exception()
    return finished_jobs(cfg)


def finished_jobs(cfg: TokenizerStudyConfig) -> list[dict[str, Any]]:
    """Results of the finished jobs, in job order."""
    return [json.loads(_job_path(cfg, j).read_text()) for j in study_jobs(cfg) if _job_path(cfg, j).exists()]


def config_dict(cfg: TokenizerStudyConfig) -> dict[str, Any]:
    out = to_dict(cfg)
    out["tokenizers"] = {name: to_dict(spec) for name, spec in cfg.tokenizers.items()}
    return out


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def paired_difference(a: list[int], b: list[int], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over paired 0/1 outcomes (same initial states) and its 95% bootstrap interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return math.nan, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    means = d[idx].mean(axis=1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _mean_sd(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _fmt(mean_sd: tuple[float, float], spec: str = ".3g") -> str:
    m, s = mean_sd
    return "n/a" if math.isnan(m) else f"{m:{spec}} ± {s:{spec}}"


class Row(NamedTuple):
    """A tokenizer (or the reference) pooled over its seeds."""

    name: str
    family: str
    horizon: int
    seeds: list[int]
    successes: int
    n: int
    rate: float
    ci: tuple[float, float]
    diff: tuple[float, float, float]
    """Success minus the reference's on the same initial states (pooled), with its bootstrap interval."""
    jobs: list[dict[str, Any]]

    def held(self, key: str) -> tuple[float, float]:
        return _mean_sd([j["held_out"].get(key, math.nan) for j in self.jobs if "held_out" in j])


def _pool(outcomes: list[list[int]]) -> tuple[int, int, float, tuple[float, float]]:
    flat = [x for o in outcomes for x in o]
    k, n = sum(flat), len(flat)
    return k, n, k / n, wilson_interval(k, n)


def summarize(results: list[dict[str, Any]]) -> list[Row]:
    """Pool each tokenizer's seeds; pair every job with the reference at its horizon and seed."""
    refs = {(r["job"]["horizon"], r["job"]["seed"]): r["closed_loop"]["successes"]
            for r in results if r["family"] == REFERENCE}
    names = list(dict.fromkeys((r["job"]["name"], r["job"]["horizon"]) for r in results))
    rows = []
    for name, horizon in names:
        jobs = [r for r in results if r["job"]["name"] == name and r["job"]["horizon"] == horizon]
        outcomes = [j["closed_loop"]["successes"] for j in jobs]
        paired = [refs[(horizon, j["job"]["seed"])] for j in jobs]
        k, n, rate, ci = _pool(outcomes)
        diff = paired_difference([x for o in outcomes for x in o], [x for o in paired for x in o])
        rows.append(Row(name, jobs[0]["family"], horizon, [j["job"]["seed"] for j in jobs], k, n, rate, ci, diff, jobs))
    return rows


def _success_cell(row: Row) -> str:
    return f"{row.rate:.3f} [{row.ci[0]:.3f}, {row.ci[1]:.3f}]"


def _diff_cell(diff: tuple[float, float, float]) -> str:
    return "n/a" if math.isnan(diff[0]) else f"{100 * diff[0]:+.1f} [{100 * diff[1]:+.1f}, {100 * diff[2]:+.1f}]"


def markdown_report(cfg: TokenizerStudyConfig, results: list[dict[str, Any]], header: str = "") -> str:
    rows = summarize(results)
    lines = [header] if header else []
    lines += [
        "## Rate, open-loop error and closed-loop success", "",
        f"Closed loop: {cfg.n} held-out initial states per task x {len(study_tasks(cfg))} tasks per seed "
        f"(seed s uses held-out states of seed s), max {cfg.max_steps} steps; success pooled over seeds with its Wilson "
        "95% interval; 'vs expert chunks' is the paired difference in points against the untokenized expert chunks on "
        "the same initial states (bootstrap 95% interval). Open loop (mean ± sd over seeds): held-out demonstration "
        "episodes cut into consecutive chunks, MSE in action units; bits = tokens x log2(ids) (FAST: mean real tokens x "
        "log2 of its BPE vocabulary), effective bits from the observed id usage. Utilization (train) is the end of the "
        "training curve, over all ~30k training chunks; held out it is over ~1k chunks (~4k ids), which cannot reach "
        "K = 4096 and barely K = 1024.", "",
        "| tokenizer | family | H | seeds | tokens/chunk | bits (nominal) | bits (effective) | utilization (train) | "
        "utilization (held out) | held-out MSE | MSE coarse | MSE fine | closed-loop success | vs expert chunks (points) "
        "| per seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = " / ".join(f"{sum(j['closed_loop']['successes'])}/{len(j['closed_loop']['successes'])}" for j in r.jobs)
        if r.family == REFERENCE:
            lines.append(f"| {r.name} | reference | {r.horizon} | {len(r.seeds)} | | | | | | 0 | | | {_success_cell(r)} | "
                         f"0 | {per_seed} |")
            continue
        lines.append(
            f"| {r.name} | {r.family} | {r.horizon} | {len(r.seeds)} | {_fmt(r.held('tokens_per_chunk'), '.3g')} | "
            f"{_fmt(r.held('bits_nominal'), '.4g')} | {_fmt(r.held('bits_effective'), '.3g')} | "
            f"{_fmt(_mean_sd([j['curve'][-1]['utilization'] for j in r.jobs]), '.2f')} | "
            f"{_fmt(r.held('utilization'), '.2f')} | {_fmt(r.held('mse'), '.2e')} | {_fmt(r.held('mse_coarse'), '.2e')} | "
            f"{_fmt(r.held('mse_fine'), '.2e')} | {_success_cell(r)} | {_diff_cell(r.diff)} | {per_seed} |")
    head = next((r for r in rows if r.name == cfg.headline), None)
    if head is not None:
        lines += ["", f"## Paired against {cfg.headline} (same seeds and initial states)", "",
                  f"Success minus {cfg.headline}'s on the same rollouts' initial states, pooled over the seeds both ran, "
                  "in points with a bootstrap 95% interval.", "",
                  "| tokenizer | H | minus " + cfg.headline + " (points) |", "|---|---|---|"]
        base = {j["job"]["seed"]: j["closed_loop"]["successes"] for j in head.jobs}
        for r in rows:
            if r is head or r.horizon != head.horizon:
                continue
            a = [x for j in r.jobs if j["job"]["seed"] in base for x in j["closed_loop"]["successes"]]
            b = [x for j in r.jobs if j["job"]["seed"] in base for x in base[j["job"]["seed"]]]
            lines.append(f"| {r.name} | {r.horizon} | {_diff_cell(paired_difference(a, b))} |")
    split = [r for r in rows if any(j.get("phase_only") for j in r.jobs)]
    if split:
        refs = {(x["job"]["horizon"], x["job"]["seed"]): x["closed_loop"]["successes"]
                for x in results if x["family"] == REFERENCE}
        lines += [
            "", "## Coarse / fine phases (arXiv 2509.05614), from the measured hand speed", "",
            f"Coarse = hand speed above the {cfg.speed_quantile:g} quantile of the training demonstrations' "
            "|observation.hand_vel|. Open loop the steps are split by the recorded hand_vel; in closed loop each chunk "
            "is assigned by the hand speed at its first step, |obs[0:3] - obs[18:21]| / dt, and only that phase's "
            "chunks are tokenized (the others are executed exactly). 'cost' = expert chunks minus this source on the "
            "same initial states, in points (bootstrap 95% interval).", "",
            "| tokenizer | H | threshold (m/s) | phase agreement hand_vel vs obs | tokenized | share of chunks tokenized | "
            "chunk MSE | closed-loop success | cost (points) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in split:
            thr = _fmt(_mean_sd([j["phase_threshold"] for j in r.jobs]), ".3g")
            agree = _fmt(_mean_sd([j["phase_agreement"] for j in r.jobs]), ".3f")
            variants = [("all chunks", [j["closed_loop"] for j in r.jobs])]
            variants += [(f"{p} only", [j["phase_only"][p] for j in r.jobs]) for p in ("coarse", "fine")]
            for label, loops in variants:
                outcomes = [lp["successes"] for lp in loops]
                k, n, rate, ci = _pool(outcomes)
                paired = [x for j in r.jobs for x in refs[(r.horizon, j["job"]["seed"])]]
                cost = paired_difference(paired, [x for o in outcomes for x in o])
                share = _fmt(_mean_sd([lp["source_stats"].get("tokenized_fraction", 1.0) for lp in loops]), ".2f")
                mse = _fmt(_mean_sd([lp["source_stats"].get("chunk_mse", math.nan) for lp in loops]), ".2e")
                lines.append(f"| {r.name} | {r.horizon} | {thr} | {agree} | {label} | {share} | {mse} | "
                             f"{rate:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {_diff_cell(cost)} |")
            lines.append(f"| | | | | MSE coarse / fine (held out) | {r.held('coarse_fraction')[0]:.2f} coarse | "
                         f"{_fmt(r.held('mse_coarse'), '.2e')} / {_fmt(r.held('mse_fine'), '.2e')} | | |")
    tasks = study_tasks(cfg)
    lines += ["", "## Closed-loop success per task (pooled over seeds)", "",
              "| tokenizer | H | " + " | ".join(t.removesuffix("-v3") for t in tasks) + " |",
              "|---|---|" + "---|" * len(tasks)]
    for r in rows:
        cells = []
        for t_i, t in enumerate(tasks):
            k = sum(j["closed_loop"]["tasks"][t_i]["successes"] for j in r.jobs)
            n = sum(j["closed_loop"]["tasks"][t_i]["n"] for j in r.jobs)
            cells.append(f"{k}/{n}")
        lines.append(f"| {r.name} | {r.horizon} | " + " | ".join(cells) + " |")
    lines += ["", "## Time", "", "| job | train + held-out (s) | closed loop (s) | env steps/s |", "|---|---|---|---|"]
    for res in results:
        t = res["closed_loop"]["timing"]
        lines.append(f"| {res['key']} | {res.get('train_seconds', 0.0):.1f} | {t['wall_s']:.1f} | {t['env_steps_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_rate_success(cfg: TokenizerStudyConfig, results: list[dict[str, Any]], path: Path) -> Path:
    """Bits per chunk (log x) vs pooled closed-loop success with Wilson intervals, one curve per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(results)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {8: "o"}
    families = list(dict.fromkeys(r.family for r in rows if r.family != REFERENCE))
    colors = {f: plt.cm.tab10(i) for i, f in enumerate(families)}
    for fam in families:
        for h in sorted({r.horizon for r in rows if r.family == fam}):
            pts = sorted((r.held("bits_nominal")[0], r) for r in rows if r.family == fam and r.horizon == h)
            x = [p[0] for p in pts]
            y = [p[1].rate for p in pts]
            err = [[p[1].rate - p[1].ci[0] for p in pts], [p[1].ci[1] - p[1].rate for p in pts]]
            ax.errorbar(x, y, yerr=err, marker=markers.get(h, "s"), capsize=3, color=colors[fam],
                        linestyle="-" if h == 8 else ":", label=f"{fam} (H={h})")
    for r in rows:
        if r.family == REFERENCE:
            ax.axhspan(r.ci[0], r.ci[1], color="grey", alpha=0.15 if r.horizon == 8 else 0.07)
            ax.axhline(r.rate, color="grey", linestyle="--" if r.horizon == 8 else ":", linewidth=1,
                       label=f"expert chunks (H={r.horizon})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per chunk (tokens x log2 ids; FAST: mean tokens)")
    ax.set_ylabel("closed-loop success (Wilson 95%)")
    ax.set_title(f"{cfg.name}: {len(study_tasks(cfg))} tasks x {cfg.n} held-out states x seeds")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_utilization(results: list[dict[str, Any]], path: Path) -> Path:
    """Utilization over training (all chunks) of the learned tokenizers, one line per job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learned = [r for r in results if r["family"] not in (REFERENCE, "bins", "fast")]
    names = list(dict.fromkeys(r["job"]["name"] for r in learned))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, name in enumerate(names):
        for j, r in enumerate(x for x in learned if x["job"]["name"] == name):
            steps = [p["step"] for p in r["curve"]]
            ax.plot(steps, [p["utilization"] for p in r["curve"]], color=plt.cm.tab20(i % 20), alpha=0.8,
                    label=name if j == 0 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel("utilization (share of ids used by the training chunks)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(cfg: TokenizerStudyConfig, results: list[dict[str, Any]], out: str | Path, header: str = "",
                 extra: dict[str, Any] | None = None) -> list[Path]:
    """`out/study.md`, `out/study.json` (config, pooled summary, every job with its per-rollout outcomes),
    `out/rate_success.png`, `out/utilization.png`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    summary = [{"name": r.name, "family": r.family, "horizon": r.horizon, "seeds": r.seeds, "successes": r.successes,
                "n": r.n, "success_rate": r.rate, "ci": list(r.ci), "vs_expert_chunks": list(r.diff),
                **{f"{k}_mean_sd": list(r.held(k)) for k in ("tokens_per_chunk", "bits_nominal", "bits_effective",
                                                             "utilization", "mse", "mse_coarse", "mse_fine")}}
               for r in rows]
    payload = {"config": config_dict(cfg), **(extra or {}), "summary": summary, "jobs": results}
    paths = [out / "study.json", out / "study.md"]
    write_atomic(paths[0], (json.dumps(payload, indent=1) + "\n").encode())
    write_atomic(paths[1], markdown_report(cfg, results, header).encode())
    paths.append(plot_rate_success(cfg, results, out / "rate_success.png"))
    paths.append(plot_utilization(results, out / "utilization.png"))
    return paths
