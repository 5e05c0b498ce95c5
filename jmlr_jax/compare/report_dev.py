"""The dev-focus tables of the evidence comparison (the sweep and the studies that chose arm e's settings), for
report.py's README section; every row's recall is measured on the dev focuses, never on the held-out ones."""

from __future__ import annotations

import math
import re

import numpy as np

from jmlr_jax.compare.stats import mcnemar


def arm_runs(results: dict, arm: str) -> dict[int, dict]:
    """seed -> part for an arm ("a", "b", "frozen" have one, seed 0)."""
    if arm in results:
        return {0: results[arm]}
    return {int(k.split("_s")[1]): v for k, v in results.items() if re.fullmatch(rf"{arm}_s\d+", k)}


def sweep_table(results: dict) -> str:
    sw = results.get("sweep")
    if not sw:
        return ""
    lines = [f"Base retriever on the dev focuses ({sw['dev_questions']} questions): recall@1 "
             f"{sw['base_dev_recall@1']:.3f}. Chosen: {sw['chosen']}.", "",
             "| stage | rank loss | retriever lr | S scored | epochs | dev recall@1 | dev recall@7 "
             "| train agreement (last 50 steps) | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sw["rows"]:
        lines.append(f"| {r['stage']} | {r['rank_loss']} | {r['retriever_lr']:g} | {r['num_sampled']} | {r['epochs']} "
                     f"| {r['dev_recall@1']:.3f} | {r['dev_recall@7']:.3f} "
                     f"| {r['train_agreement_last50']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _dev_cells(row: dict, base: dict) -> str:
    """A dev-recall row's cells: recall@1 ± s.e. | McNemar p against `base` ("-" for base itself) | recall@7."""
    hit = lambda r, k: np.asarray([x is not None and x <= k for x in r["dev_ranks"]])  # noqa: E731
    h1 = hit(row, 1)
    p = "-" if row is base else f"{mcnemar(h1, hit(base, 1))['p']:.2g}"
    return f"{h1.mean():.3f} ± {h1.std(ddof=1) / math.sqrt(len(h1)):.3f} | {p} | {hit(row, 7).mean():.3f}"


def scale_table(results: dict) -> str:
    """Arm e's dev recall by training-set size and lr (part "scale"), then by passes over the whole pool (part
    "passes"), each row against the base retriever (McNemar)."""
    sc, ps = results.get("scale"), results.get("passes")
    if not sc:
        return ""
    base = sc["rows"][0]
    epochs = sc["settings"].get("epochs", 1)
    chosen = f"lr {sc.get('chosen_lr', '-'):g}"
    if ps:
        chosen += f", {ps['chosen_epochs']} pass" + "es" * (ps["chosen_epochs"] != 1)
    lines = [f"Arm e (seed 0, settings {sc['settings']} but the lr and passes) trained on the first n of a pool of "
             f"{sc['pool']} training questions; recall on all {sc['dev_questions']} dev-focus questions (n = 0: the "
             f"base retriever)" + ("; the last rows (part passes) make more passes over the whole pool at the lr "
                                   "chosen on it" if ps else "") + f". Chosen for (eL), on the whole pool: {chosen}.",
             "", "| training questions | retriever lr | passes | dev recall@1 ± s.e. | McNemar p vs base "
             "| dev recall@7 | s |", "|---|---|---|---|---|---|---|"]
    for row in sc["rows"] + (ps["rows"] if ps else []):
        lr = f"{row['retriever_lr']:g}" if row.get("retriever_lr") else "-"
        passes = "-" if row is base else row.get("epochs", epochs)
        lines.append(f"| {row['questions']} | {lr} | {passes} | {_dev_cells(row, base)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def focuses_table(results: dict, part: str = "focuses") -> str:
    """Arm e's dev recall on the pool without and with the extra training focuses, per lr (part "focuses", or
    "focuses_kept": eL's questions keep eL's candidates), each row against the base retriever (McNemar)."""
    fo = results.get(part)
    if not fo:
        return ""
    base = fo["rows"][0]
    st = fo["settings"]
    kept = part == "focuses_kept"
    mined = ("only the extra focuses' training candidates are mined from (eL's questions keep the candidates mined "
             "from the corpus alone)" if kept else "only training candidates are mined from")
    lines = [f"Arm e (seed 0, eL's settings: {st.get('epochs', 1)} pass(es), batch {st.get('batch_size', 1)}, "
             f"{st['rank_loss']} over {st['num_sampled']} scored) trained on the first n of a pool of {fo['pool']} "
             f"questions: the {fo['pool'] - fo['extra_questions']} of eL's pool, then the {fo['extra_questions']} "
             f"questions of {fo['extra_focuses']} more training focuses, whose {fo['training_only_passages']} answer "
             f"passages {mined} (every row searches the same corpus for dev); recall "
             f"on all {fo['dev_questions']} dev-focus questions (n = 0: the base retriever). Chosen for "
             f"({'eK' if kept else 'eF'}), on the whole pool: lr {fo['chosen_lr']:g}. Questions found verbatim in a "
             f"passage: {len(fo['question_leaks'])}.",
             "", "| training questions | retriever lr | dev recall@1 ± s.e. | McNemar p vs base | dev recall@7 | s |",
             "|---|---|---|---|---|---|"]
    for row in fo["rows"]:
        lr = f"{row['retriever_lr']:g}" if row.get("retriever_lr") else "-"
        lines.append(f"| {row['questions']} | {lr} | {_dev_cells(row, base)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def negatives_table(results: dict) -> str:
    """Arm e on the whole pool in batches, without and with in-batch negatives (part "negatives"), against the
    batch-1 row at the same lr and passes (McNemar)."""
    ng = results.get("negatives")
    if not ng:
        return ""
    base = ng["baseline"]
    chosen = ng["chosen"]
    lines = [f"Arm e (seed 0) on the whole pool of {ng['pool']} questions at lr {base['retriever_lr']:g} and "
             f"{base['epochs']} pass(es), batch 1 (the row above) against batches of several questions, without and "
             "with in-batch negatives (each question's KL also spans the other questions' candidates in the batch, "
             "with target probability 0); recall on all "
             f"{ng['dev_questions']} dev-focus questions. Chosen for (eL): batch {chosen['batch_size']}, "
             f"in-batch negatives {'yes' if chosen['in_batch_negatives'] else 'no'}.", "",
             "| batch | in-batch negatives | dev recall@1 ± s.e. | McNemar p vs batch 1 | dev recall@7 | s |",
             "|---|---|---|---|---|---|"]
    for row in [base] + ng["rows"]:
        lines.append(f"| {row['batch_size']} | {'yes' if row['in_batch_negatives'] else 'no'} | "
                     f"{_dev_cells(row, base)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def posterior_table(results: dict) -> str:
    """Arm e on the whole pool at eL's settings with other temperatures of the KL's target (part "posterior"),
    against eL's own dev row (beta 1; McNemar)."""
    po = results.get("posterior")
    if not po:
        return ""
    base = po["baseline"]
    lines = [f"Arm e (seed 0) on the whole pool of {po['pool']} questions at eL's settings (lr "
             f"{base['retriever_lr']:g}, {base['epochs']} pass(es), batch {base['batch_size']}), the KL's target "
             "softmax(-l / beta) over the scored candidates (l: the generator's mean NLL per answer token) at other "
             f"temperatures than beta = 1 (eL's: its scale-table row); recall on all {po['dev_questions']} dev-focus "
             f"questions. Best on dev: beta {po['best_beta']:g} (dev only: eL's settings are unchanged).", "",
             "| beta | dev recall@1 ± s.e. | McNemar p vs beta 1 | dev recall@7 | s |", "|---|---|---|---|---|"]
    for row in [base] + po["rows"]:
        lines.append(f"| {row['kl_beta']:g} | {_dev_cells(row, base)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def weights_table(results: dict, part: str = "weights") -> str:
    """An arm's retrievers combined in weight space (part "weights": eL's soup and WiSE-FT; "weights_eB": eB's
    WiSE-FT, each row on the corpus its weights re-encoded) against the arm's seed 0 (McNemar)."""
    wt = results.get(part)
    if not wt:
        return ""
    rows, arm = wt["rows"], wt.get("arm", "eL")
    ref = next(r for r in rows if r["source"].startswith(f"{arm} seed") and r["alpha"] == 1.0)
    st = wt["settings"]
    if arm == "eL":
        intro = (f"Arm eL (the whole pool of {wt['pool']} questions, lr {st['retriever_lr']:g}, {st['epochs']} pass(es)) "
                 "combined with other retrievers in weight space: the soup is the mean of its seeds' weights, alpha "
                 "interpolates a retriever with the base one, (1 - alpha) * base + alpha * trained (WiSE-FT); recall on "
                 f"all {wt['dev_questions']} dev-focus questions, McNemar against {ref['source']}. Best on dev: "
                 f"{wt['best']['source']} at alpha {wt['best']['alpha']:g} (dev only: no arm changes). Training the "
                 f"seeds took {wt['train_seconds'] / 60:.1f} min.")
    else:
        intro = (f"Arm {arm} (both encoder sides trained on the whole pool of {wt['pool']} questions, lr "
                 f"{st['retriever_lr']:g}, {st['epochs']} pass(es)), seed 0, interpolated with the base retriever, "
                 "(1 - alpha) * base + alpha * trained (WiSE-FT), each row searching the corpus re-encoded by its own "
                 f"weights (base: the base index); recall on all {wt['dev_questions']} dev-focus questions, McNemar "
                 f"against {ref['source']}. Best on dev: {wt['best']['source']} at alpha {wt['best']['alpha']:g} (dev "
                 f"only: no arm changes). Training took {wt['train_seconds'] / 60:.1f} min; s: each row's seconds, "
                 "re-encoding the corpus included unless an earlier run left that index in work_dir.")
    lines = [intro, "",
             f"| retriever | alpha | dev recall@1 ± s.e. | McNemar p vs {ref['source']} | dev recall@7 | s |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['source']} | {row['alpha']:g} | {_dev_cells(row, ref)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def ensemble_table(results: dict, part: str = "ensemble_eB") -> str:
    """An arm's seed-0 retriever and the base one ensembled in output space, per weight, against the arm alone."""
    en = results.get(part)
    if not en:
        return ""
    arm, st = en["arm"], en["settings"]
    ref = next(r for r in en["rows"] if r["weight"] == 1.0)
    lines = [f"Arm {arm} seed {en['seed']} (both encoder sides trained on the whole pool of {en['pool']} questions, lr "
             f"{st['retriever_lr']:g}, {st['epochs']} pass(es)) and the base retriever ensembled in output space: "
             f"each passage scored (1 - w) * base MaxSim + w * {arm} MaxSim, each retriever on the corpus its own "
             f"weights encoded (w 0: the base retriever alone, 1: {arm} alone); recall on all {en['dev_questions']} "
             f"dev-focus questions, McNemar against {arm} alone. Best on dev: w {en['best_weight']:g} (dev only: no arm "
             f"changes). Scoring every passage for both retrievers took {en['search_seconds']:.0f} s.", "",
             f"| w | dev recall@1 ± s.e. | McNemar p vs {arm} alone | dev recall@7 |", "|---|---|---|---|"]
    for row in en["rows"]:
        lines.append(f"| {row['weight']:g} | {_dev_cells(row, ref)} |")
    return "\n".join(lines)


def both_sides_table(results: dict) -> str:
    """Arms eB's, eR's (and eFB's / eKB's) recall on every dev-focus question per seed (each on the corpus its
    trained encoder re-encoded) against the base retriever and arm eL's seed-0 run (the scale part's whole-pool
    row at eL's lr; McNemar)."""
    runs, sc = arm_runs(results, "eB"), results.get("scale")
    if not runs or not sc:
        return ""
    base = sc["rows"][0]
    eL = next((r for r in sc["rows"] if r["questions"] == sc["pool"] and r["retriever_lr"] == sc["chosen_lr"]), None)
    lines = [f"Arm eL's settings with the document side trained too (candidates encoded live in the step), then the "
             f"whole corpus re-encoded by the trained encoder before searching; recall on all {sc['dev_questions']} "
             "dev-focus questions, McNemar against (eL) seed 0 (the scale part's whole-pool row at eL's lr).", "",
             "| retriever | seed | dev recall@1 ± s.e. | McNemar p vs (eL) seed 0 | dev recall@7 | re-encoding s |",
             "|---|---|---|---|---|---|"]
    ref = eL or base
    lines.append(f"| base (frozen) | - | {_dev_cells(base, ref)} | - |")
    if eL:
        lines.append(f"| (eL) query side only | 0 | {_dev_cells(eL, eL)} | - |")
    for arm, label in (("eB", "(eB) both sides, refreshed"), ("eR", "(eR) second round, re-mined"),
                       ("eFB", "(eFB) both sides, more focuses"),
                       ("eKB", "(eKB) both sides, more focuses, eL's candidates kept"),
                       ("eT", "(eT) both sides, KL temperature chosen on dev"),
                       ("eTR", "(eTR) eT's second round, re-mined")):
        for seed, part in sorted(arm_runs(results, arm).items()):
            lines.append(f"| {label} | {seed} | {_dev_cells(part['dev_all'], ref)} "
                         f"| {part.get('refresh_seconds', 0):.0f} |")
    return "\n".join(lines)



def dev_sections(results: dict) -> list[str]:
    """The README's dev-focus sections (markdown lines) for the dev parts present in `results`."""
    return ["### Retriever settings chosen on the dev focuses (arm e)", "", sweep_table(results), "",
            *(["### More training questions for the retriever (arm e, dev focuses)", "", scale_table(results), ""]
              if "scale" in results else []),
            *(["### In-batch negatives (arm e, dev focuses)", "", negatives_table(results), ""]
              if "negatives" in results else []),
            *(["### Both encoder sides trained, index refreshed (arms eB, eR and their variants, dev focuses)", "",
               both_sides_table(results), ""] if arm_runs(results, "eB") else []),
            *(["### Temperature of the LLM posterior (arm e, dev focuses)", "", posterior_table(results), ""]
              if "posterior" in results else []),
            *(["### Soup and WiSE-FT of the trained retrievers (arm eL, dev focuses)", "", weights_table(results), ""]
              if "weights" in results else []),
            *(["### WiSE-FT of the both-sides retriever (arm eB, dev focuses)", "",
               weights_table(results, "weights_eB"), ""] if "weights_eB" in results else []),
            *(["### Output-space ensemble of the both-sides retriever and the base one (arm eB, dev focuses)", "",
               ensemble_table(results), ""] if "ensemble_eB" in results else []),
            *(["### More training focuses (arm e, dev focuses)", "", focuses_table(results), ""]
              if "focuses" in results else []),
            *(["### More training focuses, eL's questions keeping their candidates (arm e, dev focuses)", "",
               focuses_table(results, "focuses_kept"), ""] if "focuses_kept" in results else [])]
