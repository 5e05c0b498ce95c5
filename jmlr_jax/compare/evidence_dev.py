"""The dev-focus parts of the evidence comparison: arm e (retriever-only, cheap with cached generator losses)
trained at several settings, scored by recall on the dev focuses (never the held-out ones), each part choosing
the settings a later arm trains with. Part sweep: rank loss x lr, then scored candidates x passes; with a pool
(compare/evidence_more_data.gin): scale (pool size x lr), passes, negatives (in-batch), posterior (KL target
temperature, dev only), weights (soup and WiSE-FT of eL's retrievers, dev only), weights_eB (WiSE-FT of eB's, each row re-encoding
the corpus), ensemble_eB (eB's and the base retriever's scores interpolated); with extra focuses: focuses /
focuses_kept (lr). A mixin of Comparison, whose training (train, trained), losses (doc_losses) and search
(dev_recall) these call."""
from __future__ import annotations

import json
import os
import time
from typing import Sequence

import jax
import numpy as np

from jmlr_jax.compare.evidence_measures import dev_summary, gold_rank
from jmlr_jax.compare.evidence_setup import POOL_ARMS, REFRESHED, SHARP
from jmlr_jax.data import evidence as ev
from jmlr_jax.errors import InputError
from jmlr_jax.retrieval.index import top_k


def soup(trees: Sequence) -> object:
    """The uniform average of parameter trees of one structure (a model soup)."""
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def interpolate(base, trained, alpha: float):
    """(1 - alpha) * base + alpha * trained, leaf by leaf (WiSE-FT's weight-space ensemble)."""
    return jax.tree.map(lambda b, t: (1 - alpha) * b + alpha * t, base, trained)


class DevParts:
    """The parts that choose the retriever's settings on the dev focuses, and the settings they chose."""

    def settings(self) -> dict:
        """The settings the sweep chose (retriever lr, rank loss, num_sampled, epochs), else the configured ones."""
        c = self.cfg
        out = {"retriever_lr": c.retriever_lr, "rank_loss": c.rank_loss, "num_sampled": c.num_sampled,
               "epochs": c.epochs}
        out.update((self._saved("sweep") or {}).get("chosen", {}))  # an older sweep chose only lr and loss
        return out

    def sweep_part(self) -> dict:
        """Arm e (cheap: cached generator losses) on the dev focuses; dev recall@1 chooses. Stage 1: rank loss x lr
        at the configured num_sampled / epochs; stage 2: num_sampled x epochs at stage 1's best loss and lr."""
        c = self.cfg
        rows = []
        base_r1 = self.dev_recall(self.models()[4])["dev_recall@1"]
        key = lambda r: (r["dev_recall@1"], r["dev_recall@7"])  # noqa: E731

        def row(stage: int, **settings) -> None:
            t0 = time.time()
            params, hist = self.train("e", c.seeds[0], settings)
            dev = self.dev_recall(params["retriever"])
            rows.append({"stage": stage, **settings, "dev_recall@1": dev["dev_recall@1"],
                         "dev_recall@7": dev["dev_recall@7"],
                         "train_agreement_last50": float(np.mean([h["agreement"] for h in hist[-50:]])),
                         "seconds": round(time.time() - t0, 1)})
            self.log(f"[sweep] {rows[-1]}")

        for loss in c.sweep_losses:
            for lr in c.sweep_lrs:
                row(1, retriever_lr=lr, rank_loss=loss, num_sampled=c.num_sampled, epochs=c.epochs)
        best = max(rows, key=key)
        for S in c.sweep_sampled:
            for epochs in c.sweep_epochs:
                if (S, epochs) != (c.num_sampled, c.epochs):
                    row(2, retriever_lr=best["retriever_lr"], rank_loss=best["rank_loss"], num_sampled=S, epochs=epochs)
        best = max(rows, key=key)
        return {"dev_questions": len(self.setup.dev), "base_dev_recall@1": base_r1, "rows": rows,
                "chosen": {k: best[k] for k in ("retriever_lr", "rank_loss", "num_sampled", "epochs")}}

    def _saved(self, part: str) -> dict | None:
        """A finished part's JSON (None before it has run)."""
        path = os.path.join(self.cfg.out_dir, f"{part}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _whole_pool_rows(self, retriever_lr: float, epochs: int, batch_size: int | None = None,
                         in_batch_negatives: bool = False) -> list[dict]:
        """The saved scale / passes / negatives rows of arm e on the whole pool at these settings (batch: the
        configured one unless given), with every one of these settings filled in."""
        # a scale row makes the sweep's passes; scale and passes rows use the configured batch without negatives
        defaults = {"epochs": self.settings()["epochs"], "batch_size": self.cfg.batch_size, "in_batch_negatives": False}
        want = {"retriever_lr": retriever_lr, "epochs": epochs, "batch_size": batch_size or self.cfg.batch_size,
                "in_batch_negatives": in_batch_negatives}
        rows = [{**defaults, **r} for part in ("scale", "passes", "negatives")
                for r in (self._saved(part) or {"rows": []})["rows"]]
        return [r for r in rows if r["questions"] == len(self.setup.pool) and all(r[k] == v for k, v in want.items())]

    def _pool_row(self, questions: int, settings: dict) -> dict:
        """Arm e (seed 0) trained on the first `questions` of the pool with `settings`: its dev recall (every
        dev-focus question), gold ranks and seconds, as a row of the scale / passes / negatives tables."""
        t0 = time.time()
        params, _ = self.train("e", self.cfg.seeds[0], settings, questions=questions)
        return {"questions": questions, **settings, **self.dev_recall(params["retriever"], "dev_all"),
                "seconds": round(time.time() - t0, 1)}

    def scale_part(self) -> dict:
        """Arm e (seed 0, the sweep's settings) trained on the first n pool questions for each n in scale_sizes and
        each lr in scale_lrs; recall on every dev-focus question. Chooses arm eL's lr: the best dev recall@1 (then
        @7) on the whole pool."""
        c = self.cfg
        lrs = c.scale_lrs or (self.settings()["retriever_lr"],)
        return {**self._size_rows("scale", [(n, lr) for lr in lrs for n in c.scale_sizes]), "settings": self.settings()}

    def _size_rows(self, part: str, runs: Sequence[tuple[int, float]], settings: dict | None = None) -> dict:
        """Arm e (seed 0) on the first n pool questions at lr, for each (n, lr) in runs (other settings: the sweep's,
        updated by `settings`), after the base retriever's row; recall on every dev-focus question. The lr with the
        best dev recall@1 (then @7) on the whole pool is chosen."""
        s = self.setup
        self.doc_losses(pool=True)  # cached once, before any row is timed
        rows = [{"questions": 0, "retriever_lr": 0.0, **self.dev_recall(self.models()[4], "dev_all"), "seconds": 0.0}]
        for n, lr in runs:
            rows.append(self._pool_row(n, {**(settings or {}), "retriever_lr": lr}))
            self.log(f"[{part}] {n} questions, lr {lr:g}: dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        whole = [r for r in rows if r["questions"] == len(s.pool)] or rows[1:]
        best = max(whole, key=lambda r: (r["dev_recall@1"], r["dev_recall@7"]))
        return {"dev_questions": len(s.dev_all), "pool": len(s.pool), "rows": rows, "chosen_lr": best["retriever_lr"]}

    def focuses_part(self) -> dict:
        """Arm e (seed 0, eL's settings) on the pool without the extra training focuses (eL's, at eL's lr; its
        candidates mined from the training view, or from the corpus alone when kept), then on the whole pool at
        each lr in focus_lrs (default: eL's); recall on every dev-focus question. Chooses arm eF's (eK's, when
        eL's questions keep their candidates) lr on the whole pool."""
        c, s = self.cfg, self.setup
        el = self.pool_settings(extra=False)
        keep = {k: el[k] for k in ("epochs", "batch_size", "in_batch_negatives") if k in el}
        runs = [(len(s.pool) - s.n_extra, el["retriever_lr"])] + [(len(s.pool), lr)
                                                                   for lr in c.focus_lrs or (el["retriever_lr"],)]
        out = self._size_rows("focuses", runs, keep)
        self.publish_cache()
        leaks = ev.question_leaks(s.corpus, s.pool)
        return {**out, "settings": {**el, **keep}, "extra_focuses": c.extra_train_focuses, "extra_questions": s.n_extra,
                "training_only_passages": len(s.corpus) - s.n_eval, "question_leaks": leaks}

    def passes_part(self) -> dict:
        """Arm e (seed 0) on the whole pool at the scale part's lr, once for each number of passes in pool_epochs;
        recall on every dev-focus question. Chooses arm eL's epochs among these and the scale part's whole-pool row
        at that lr (the sweep's passes): the best dev recall@1, then @7, fewer passes on a tie."""
        c, s = self.cfg, self.setup
        scale = self._saved("scale")
        if scale is None:
            raise InputError("part passes starts from the scale part's choice: run part scale first "
                             f"({os.path.join(c.out_dir, 'scale.json')})")
        lr, epochs = scale["chosen_lr"], self.settings()["epochs"]
        done = self._whole_pool_rows(lr, epochs)
        self.doc_losses(pool=True)  # cached once, before any row is timed
        rows = []
        for e in sorted(set(c.pool_epochs) - {epochs}):
            rows.append(self._pool_row(len(s.pool), {"retriever_lr": lr, "epochs": e}))
            self.log(f"[passes] {e} passes, lr {lr:g}: dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        best = max(done + rows, key=lambda r: (r["dev_recall@1"], r["dev_recall@7"], -r["epochs"]))
        return {"dev_questions": len(s.dev_all), "pool": len(s.pool), "rows": rows, "chosen_epochs": best["epochs"]}

    def negatives_part(self) -> dict:
        """Arm e (seed 0) on the whole pool at eL's lr and passes, in batches of negatives_batch questions, without
        and with in-batch negatives; recall on every dev-focus question. Chooses eL's batch among these and the
        batch-1 row at that lr and passes (the scale or passes part's): the best dev recall@1, then @7, then the
        earlier row (batch 1, no negatives) on a tie."""
        c, s = self.cfg, self.setup
        settings = self.pool_settings()
        lr, epochs = settings["retriever_lr"], settings["epochs"]
        done = self._whole_pool_rows(lr, epochs)
        if not done:
            raise InputError(f"part negatives compares with the batch-1 row at eL's lr {lr:g} and {epochs} passes: "
                             "run parts scale (and passes) first")
        base = done[0]
        self.doc_losses(pool=True)  # cached once, before any row is timed
        rows = []
        for neg in (False, True):
            rows.append(self._pool_row(len(s.pool), {"retriever_lr": lr, "epochs": epochs,
                                                     "batch_size": c.negatives_batch, "in_batch_negatives": neg}))
            self.log(f"[negatives] batch {c.negatives_batch}, in-batch negatives {neg}: "
                     f"dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        ranked = [base] + rows
        best = max(range(len(ranked)), key=lambda i: (ranked[i]["dev_recall@1"], ranked[i]["dev_recall@7"], -i))
        return {"dev_questions": len(s.dev_all), "pool": len(s.pool), "baseline": base, "rows": rows,
                "chosen": {k: ranked[best][k] for k in ("batch_size", "in_batch_negatives")}}

    def posterior_part(self) -> dict:
        """Arm e (seed 0) on the whole pool at eL's settings with each KL target temperature in posterior_betas;
        recall on every dev-focus question, against eL's own row there (beta 1, from the scale / passes /
        negatives part). Dev only: it reports the best beta, it does not change eL's settings."""
        c, s = self.cfg, self.setup
        settings = self.pool_settings()  # eL's
        want = {"retriever_lr": settings["retriever_lr"], "epochs": settings["epochs"],
                "batch_size": settings.get("batch_size", c.batch_size),
                "in_batch_negatives": settings.get("in_batch_negatives", False)}
        base = [{**r, "kl_beta": 1.0} for r in self._whole_pool_rows(**want)]
        if not base:
            raise InputError(f"part posterior compares with eL's dev row ({want}): run parts scale (and passes, "
                             "negatives) first")
        self.doc_losses(pool=True)  # cached once, before any row is timed
        rows = []
        for beta in sorted(set(c.posterior_betas) - {1.0}):
            rows.append(self._pool_row(len(s.pool), {**want, "kl_beta": beta}))
            self.log(f"[posterior] beta {beta:g}: dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        ranked = base[:1] + rows
        best = max(range(len(ranked)), key=lambda i: (ranked[i]["dev_recall@1"], ranked[i]["dev_recall@7"], -i))
        return {"dev_questions": len(s.dev_all), "pool": len(s.pool), "baseline": base[0], "rows": rows,
                "best_beta": ranked[best]["kl_beta"]}

    def weights_part(self, arm: str = "eL") -> dict:
        """An arm's retrievers combined in weight space; recall on every dev-focus question, each row against the
        arm's seed 0. Arm eL (part weights): its seeds' retrievers (trained here when work_dir lacks them), their
        uniform soup, and seed 0 and the soup interpolated with the base retriever at each alpha in weight_alphas
        (WiSE-FT). Arm eB (part weights_eB; both encoder sides trained): seed 0 alone at each alpha, every row
        searching the corpus re-encoded by its own weights (a soup would need two more both-sides trainings, and
        eL's did not beat its seed 0). Dev only: reports the best row, changes no arm."""
        c, s = self.cfg, self.setup
        base = self.models()[4]
        refreshed = arm in REFRESHED
        t0 = time.time()
        seeds = {seed: self.trained(arm, seed)["retriever"] for seed in (c.seeds[:1] if refreshed else c.seeds)}
        train_s = self._training_seconds(arm, seeds, t0)
        rows, part = [], "weights" + ("" if arm == "eL" else f"_{arm}")

        def row(source: str, alpha: float, params, tag: str = "") -> None:
            t0 = time.time()
            docs = {"docs": self.refresh_index(tag, params)} if refreshed and alpha > 0 else {}
            rows.append({"source": source, "alpha": alpha, **self.dev_recall(params, "dev_all", **docs),
                         "seconds": round(time.time() - t0, 1)})
            self.log(f"[{part}] {source}, alpha {alpha:g}: dev recall@1 {rows[-1]['dev_recall@1']:.3f}")

        row("base", 0.0, base)
        for seed, params in seeds.items():
            row(f"{arm} seed {seed}", 1.0, params, f"{arm}_s{seed}")
        combined = [(f"{arm} seed {c.seeds[0]}", seeds[c.seeds[0]], f"{arm}_s{c.seeds[0]}")]  # source, params, tag
        if len(seeds) > 1:
            combined.append(("soup", soup(list(seeds.values())), f"{arm}-soup"))
            row("soup", 1.0, *combined[-1][1:])
        for source, params, tag in combined:
            for alpha in sorted(set(c.weight_alphas) - {0.0, 1.0}):
                row(source, alpha, interpolate(base, params, alpha), f"{tag}-wise{alpha:g}")
        best = max(rows, key=lambda r: (r["dev_recall@1"], r["dev_recall@7"]))
        return {"arm": arm, "dev_questions": len(s.dev_all), "pool": len(s.pool), "settings": self.arm_settings(arm),
                "train_seconds": train_s, "rows": rows, "best": {k: best[k] for k in ("source", "alpha")}}

    def ensemble_part(self, arm: str = "eB") -> dict:
        """An arm's seed-0 retriever and the base one ensembled in output space (WiSE-FT's other ensemble): each
        passage scored (1 - w) * base MaxSim + w * trained MaxSim, every retriever against the corpus its own
        weights encoded, at each w in ensemble_weights (w 0: the base retriever, 1: the trained one); recall on
        every dev-focus question. Dev only: reports the best row, changes no arm."""
        c, s = self.cfg, self.setup
        seed = c.seeds[0]
        t0 = time.time()
        trained = self.trained(arm, seed)["retriever"]
        train_s = self._training_seconds(arm, [seed], t0)
        t0 = time.time()
        docs = self.refresh_index(f"{arm}_s{seed}", trained) if arm in REFRESHED else "base"
        base_S, trained_S = self.scores(self.models()[4], s.dev_all), self.scores(trained, s.dev_all, docs)
        rows = []
        for w in (0.0, *sorted(set(c.ensemble_weights) - {0.0, 1.0}), 1.0):
            top = top_k((1 - w) * base_S + w * trained_S, 30)  # ranked as exact search ranks
            rows.append({"weight": w, **dev_summary([gold_rank(t, g) for t, g in zip(top, s.gold["dev_all"])])})
            self.log(f"[ensemble_{arm}] w {w:g}: dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        best = max(rows, key=lambda r: (r["dev_recall@1"], r["dev_recall@7"]))
        return {"arm": arm, "seed": seed, "dev_questions": len(s.dev_all), "pool": len(s.pool),
                "settings": self.arm_settings(arm), "train_seconds": train_s,
                "search_seconds": round(time.time() - t0, 1), "rows": rows, "best_weight": best["weight"]}

    def _training_seconds(self, arm: str, seeds, started: float) -> float:
        """What training these seeds of an arm took: as saved beside their weights (by this run or an earlier one),
        else the time since `started`."""
        saved = [self.saved_history(arm, seed) for seed in seeds]
        return round(sum(h["seconds"] for h in saved) if None not in saved else time.time() - started, 1)

    def pool_settings(self, extra: bool | None = None) -> dict:
        """Arm eL's settings: the sweep's, with the retriever lr the scale part, the number of passes the passes
        part and the batch (with or without in-batch negatives) the negatives part chose on the whole pool (dev).
        With extra focuses (default: when configured), arm eF's or eK's: eL's with the lr their focuses part chose."""
        out = self.settings()
        for part, key, name in (("scale", "chosen_lr", "retriever_lr"), ("passes", "chosen_epochs", "epochs")):
            out[name] = (self._saved(part) or {}).get(key, out[name])
        out.update((self._saved("negatives") or {}).get("chosen", {}))
        if bool(self.cfg.extra_train_focuses) if extra is None else extra:
            out["retriever_lr"] = (self._saved(self._focuses_part) or {}).get("chosen_lr", out["retriever_lr"])
        return out

    def arm_settings(self, arm: str) -> dict:
        """The retriever settings an arm trains with: the sweep's, eL's for the pool arms, and for eT / eTR eL's at
        the KL target temperature the posterior part chose on dev."""
        if arm not in POOL_ARMS:
            return self.settings()
        out = self.pool_settings()
        if arm in SHARP:
            po = self._saved("posterior")
            if po is None:
                raise InputError(f"arm {arm} trains at the KL temperature part posterior chooses on the dev focuses: "
                                 "run part posterior first")
            out["kl_beta"] = po["best_beta"]
        return out
