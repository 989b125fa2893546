"""``privkit anonymize``: fit the anonymizer on a dataset, release, evaluate both sides, report.

The run

1. checks every input before anything is written (:func:`check_inputs`);
2. encodes the data with its modality's representation and fits
   :class:`~privkit.anonymize.estimator.BiometricAnonymizer` with class *names* as labels (so a
   saved anonymizer matches new data by name);
3. releases every record (batch by batch; optionally written in the input's own format);
4. evaluates privacy and utility on the released data against the original
   (:func:`evaluate_release`) and a privacy-utility curve over ``k``
   (:func:`privacy_utility_curve`);
5. writes the artifact (kind ``"anonymizer"``), ``metrics.json`` and ``report.html``.

Verification EER (see :func:`verification_eer`) is computed from *embedding distances*: every
record's representation vector (pixels, log-mel, motion window, features) is standardised per
feature, projected on the first ``min(64, N - 1)`` principal components of that same data, and
compared by Euclidean distance. Same-identity pairs and different-identity pairs (up to
``max_pairs`` of each, drawn with the seed) give two distance distributions; the EER is the error
rate at the threshold where the false-accept rate (different-person pairs closer than the
threshold) equals the false-reject rate (same-person pairs farther). 50 % means distances say
nothing about identity.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from privkit.anonymize.estimator import BiometricAnonymizer
from privkit.anonymize.representations import Representation, get_representation
from privkit.data.datasets import ArrayDataset, AttributeDataset
from privkit.errors import ConfigError, SchemaError

#: Attackers of the privacy-utility curve: cheap, so the curve costs a few fits, not a few CNNs.
CURVE_ATTACKERS = ("linear", "mlp")
DEFAULT_CURVE_K = (1, 2, 3, 5, 8)


@dataclass
class AnonymizeConfig:
    """Options of one ``privkit anonymize`` run (hyperparameters of the estimator and the report)."""

    k: int = 5
    weight: float = 0.5
    top_features: float = 0.2
    seed: int = 0
    relevance: str = "linear"
    weighting: str = "hard"
    pool_size: int | None = None
    attackers: tuple[str, ...] = ("linear", "mlp")
    curve_k: tuple[int, ...] = DEFAULT_CURVE_K
    curve_attackers: tuple[str, ...] = CURVE_ATTACKERS
    other: str | None = None
    batch_size: int = 256
    max_pairs: int = 20000
    extra: dict = field(default_factory=dict)

    def estimator(self, representation: Representation, k: int | None = None) -> BiometricAnonymizer:
        return BiometricAnonymizer(k=int(self.k if k is None else k), weight=self.weight, top_features=self.top_features,
                                   relevance=self.relevance, weighting=self.weighting, pool_size=self.pool_size,
                                   seed=int(self.seed), representation=representation)


# ---------------------------------------------------------------------------------------------
# checks (before any output exists)
# ---------------------------------------------------------------------------------------------
def check_inputs(ds: AttributeDataset, sensitive: str, keep: str, cfg: AnonymizeConfig) -> str:
    """Validate a run's inputs; returns the attribute used as the "other" utility attribute.

    Raises
    ------
    SchemaError
        Unknown attribute (the message lists the known ones), ``sensitive`` not the dataset's
        identity attribute, or a dataset without an identity attribute.
    ConfigError
        ``sensitive == keep``, ``k`` larger than the number of identities in some kept class,
        ``weight`` outside ``[0, 1]``, ``top_features`` outside ``(0, 1]``, unknown attackers.
    """
    schema = ds.schema
    schema.attribute(sensitive)
    schema.attribute(keep)
    if sensitive == keep:
        raise ConfigError(f"--sensitive and --keep are both {keep!r}; keep an attribute other than the one to hide")
    identity = schema.identity_attribute
    if identity is None:
        raise SchemaError(f"the dataset has no identity attribute (attributes: {', '.join(schema.attribute_names)}); "
                          f"anonymization hides people, so the data must say who each record belongs to")
    if sensitive != identity:
        raise SchemaError(f"--sensitive {sensitive!r} is not an identity attribute; this dataset's identity attribute "
                          f"is {identity!r}: use --sensitive {identity}")
    probe = cfg.estimator(get_representation("features", (1,)))
    probe._check_params()  # k, weight, top_features, relevance, weighting, pool_size, seed
    from privkit.evaluate.attackers import list_attackers

    for kind in (*cfg.attackers, *cfg.curve_attackers):
        if kind not in list_attackers():
            raise ConfigError(f"unknown attacker {kind!r}; known attackers: {', '.join(list_attackers())}")
    for k in cfg.curve_k:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ConfigError(f"--curve-k value {k!r} is not a set size; use integers >= 1 such as 1,2,3,5,8")
    # k distinct identities must exist in every kept class (same-class sets)
    keep_codes, ident_codes = ds.attr(keep), ds.attr(sensitive)
    keep_attr = schema.attribute(keep)
    for c in np.unique(keep_codes):
        n_ident = len(np.unique(ident_codes[keep_codes == c]))
        if int(cfg.k) > n_ident:
            raise ConfigError(f"k={cfg.k} is larger than the {n_ident} identities with {keep}={keep_attr.classes[c]!r}; "
                              f"lower --k to at most {max_feasible_k(ds, sensitive, keep)}")
    if len(np.unique(keep_codes)) < 2:
        raise ConfigError(f"--keep {keep!r} has a single class in this data; keep an attribute with at least 2 classes")
    other = cfg.other
    if other is not None:
        schema.attribute(other)
        if other in (sensitive, keep):
            raise ConfigError(f"--other {other!r} must differ from --sensitive and --keep; name an attribute not used for relevance")
    else:
        candidates = [a.name for a in schema.attributes if a.name not in (sensitive, keep) and not a.identity]
        other = candidates[0] if candidates else None
    return other


def max_feasible_k(ds: AttributeDataset, sensitive: str, keep: str) -> int:
    """Largest ``k`` with ``k`` distinct identities in every kept class."""
    keep_codes, ident_codes = ds.attr(keep), ds.attr(sensitive)
    return int(min(len(np.unique(ident_codes[keep_codes == c])) for c in np.unique(keep_codes)))


# ---------------------------------------------------------------------------------------------
# fitting and releasing
# ---------------------------------------------------------------------------------------------
def representation_for(schema) -> Representation:
    """The representation of the dataset's modality (audio: log-mel at the schema's sample rate)."""
    return get_representation(schema.modality, schema.input_shape, sample_rate=schema.sample_rate)


def class_names(ds: AttributeDataset, name: str) -> np.ndarray:
    """Labels of attribute ``name`` as class-name strings."""
    return np.asarray(ds.schema.attribute(name).classes)[ds.attr(name)]


def fit_anonymizer(x: torch.Tensor, ds: AttributeDataset, sensitive: str, keep: str, cfg: AnonymizeConfig,
                   k: int | None = None, representation: Representation | None = None) -> BiometricAnonymizer:
    """Fit on samples ``x`` of ``ds`` (materialized), labels given as class names."""
    representation = representation or representation_for(ds.schema)
    return cfg.estimator(representation, k).fit(x, class_names(ds, keep), class_names(ds, sensitive))


def released_batches(anonymizer: BiometricAnonymizer, x: torch.Tensor, ds: AttributeDataset, sensitive: str, keep: str,
                     batch_size: int, out: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(indices, released samples)`` batch by batch; each batch also lands in ``out`` when given.

    ``start_row`` ties each record's draws to its row, so the release equals one ``transform`` call.
    """
    keep_names, ident_names = class_names(ds, keep), class_names(ds, sensitive)
    n = len(ds)
    for start in range(0, n, int(batch_size)):
        stop = min(n, start + int(batch_size))
        released = anonymizer.transform(x[start:stop], keep_names[start:stop], ident_names[start:stop],
                                         batch_size=int(batch_size), start_row=start)
        released = torch.as_tensor(released, dtype=torch.float32)
        if out is not None:
            out[start:stop] = released.numpy()
        yield np.arange(start, stop), released


def release(anonymizer: BiometricAnonymizer, x: torch.Tensor, ds: AttributeDataset, sensitive: str, keep: str,
            batch_size: int = 256, release_dir: str | Path | None = None) -> np.ndarray:
    """Anonymize every record; write them in the input's own format to ``release_dir`` when given.

    Returns the released samples ``(N, *input_shape)`` (float32) for evaluation.
    """
    out = np.empty((len(ds), *ds.schema.input_shape), dtype=np.float32)
    batches = released_batches(anonymizer, x, ds, sensitive, keep, batch_size, out)
    if release_dir is not None:
        from privkit.data.writers import write_released

        write_released(ds, batches, release_dir)
    else:
        for _ in batches:
            pass
    return out


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def equal_error_rate(same: np.ndarray, different: np.ndarray) -> float:
    """EER of distance distributions: same-identity pairs should be closer (smaller distances).

    With threshold ``t`` a pair is accepted as "same person" when its distance is ``<= t``:
    ``FRR(t) = P(d_same > t)`` and ``FAR(t) = P(d_diff <= t)``. Over the thresholds at every observed
    distance, the EER is ``(FAR + FRR) / 2`` where ``|FAR - FRR|`` is smallest.
    """
    same, different = np.asarray(same, dtype=np.float64), np.asarray(different, dtype=np.float64)
    if len(same) == 0 or len(different) == 0:
        return float("nan")
    thresholds = np.unique(np.concatenate([same, different, [-np.inf]]))
    same_sorted, diff_sorted = np.sort(same), np.sort(different)
    frr = 1.0 - np.searchsorted(same_sorted, thresholds, side="right") / len(same)
    far = np.searchsorted(diff_sorted, thresholds, side="right") / len(different)
    best = int(np.argmin(np.abs(far - frr)))
    return float((far[best] + frr[best]) / 2.0)


def embeddings(samples, representation: Representation, n_components: int = 64, batch_size: int = 512) -> np.ndarray:
    """Standardised representation vectors projected on their first principal components."""
    rows = np.concatenate([representation.encode(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)])
    rows = rows.astype(np.float64)
    rows = (rows - rows.mean(axis=0)) / np.maximum(rows.std(axis=0), 1e-8)
    n_comp = int(max(1, min(n_components, rows.shape[0] - 1, rows.shape[1])))
    # principal axes from the SVD of the (centred) data: the top right-singular vectors
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    return rows @ vt[:n_comp].T


def verification_eer(emb: np.ndarray, identity: np.ndarray, seed: int = 0, max_pairs: int = 20000) -> float:
    """Verification EER from Euclidean distances between embeddings ``emb`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    identity = np.asarray(identity)
    n = len(identity)
    same_pairs = []
    for person in np.unique(identity):
        members = np.flatnonzero(identity == person)
        if len(members) > 1:
            i, j = np.triu_indices(len(members), k=1)
            same_pairs.append(np.stack([members[i], members[j]], axis=1))
    if not same_pairs:
        return float("nan")
    same_pairs = np.concatenate(same_pairs)
    if len(same_pairs) > max_pairs:
        same_pairs = same_pairs[rng.choice(len(same_pairs), max_pairs, replace=False)]
    a = rng.integers(0, n, size=4 * max_pairs)
    b = rng.integers(0, n, size=4 * max_pairs)
    keep = identity[a] != identity[b]
    diff_pairs = np.stack([a[keep], b[keep]], axis=1)[:max_pairs]

    def dist(pairs):
        return np.linalg.norm(emb[pairs[:, 0]] - emb[pairs[:, 1]], axis=1)

    return equal_error_rate(dist(same_pairs), dist(diff_pairs))


def released_dataset(ds: AttributeDataset, released: np.ndarray) -> ArrayDataset:
    """The released samples with the original labels (what an attacker holding the release sees)."""
    return ArrayDataset(ds.schema, released, np.asarray(ds.labels), sample_ids=list(ds.sample_ids))


def attack(ds: AttributeDataset, attributes: Sequence[str], kinds: Sequence[str], seed: int) -> dict:
    from privkit.evaluate.attackers import fresh_attackers

    return fresh_attackers(ds, list(attributes), kinds=tuple(kinds), seed=seed)


def evaluate_release(ds: AttributeDataset, x: torch.Tensor, released: np.ndarray, sensitive: str, keep: str,
                     other: str | None, cfg: AnonymizeConfig, representation: Representation,
                     original_attacks: dict | None = None) -> dict:
    """Privacy (re-identification, EER) and utility (kept + other attribute) of a release vs the original."""
    attributes = [sensitive, keep] + ([other] if other else [])
    original = original_attacks or attack(ds, attributes, cfg.attackers, cfg.seed)
    after = attack(released_dataset(ds, released), attributes, cfg.attackers, cfg.seed)
    identity = ds.attr(sensitive)
    eer = {"original": verification_eer(embeddings(x, representation), identity, cfg.seed, cfg.max_pairs),
           "released": verification_eer(embeddings(released, representation), identity, cfg.seed, cfg.max_pairs)}
    utility = {a: {"original": original[a]["best"], "released": after[a]["best"], "chance": after[a]["chance"]}
               for a in attributes[1:]}
    return {
        "reidentification": {"original": original[sensitive]["best"], "released": after[sensitive]["best"],
                             "chance": after[sensitive]["chance"]},
        "eer": eer,
        "utility": utility,
        "attackers": {"original": original, "released": after},
    }


def _best_of(row: dict, kinds: Sequence[str]) -> float | None:
    """Best accuracy among ``kinds`` in a fresh-attacker result row (None when one is missing)."""
    if not all(kind in row for kind in kinds):
        return None
    return float(max(row[kind] for kind in kinds))


def privacy_utility_curve(ds: AttributeDataset, x: torch.Tensor, sensitive: str, keep: str, cfg: AnonymizeConfig,
                          representation: Representation, known: dict[int, dict] | None = None) -> list[dict]:
    """Re-identification and kept-attribute accuracy (best of ``cfg.curve_attackers``) for each feasible ``k``.

    ``known`` maps a ``k`` to fresh-attacker results already computed on that release (the run's
    own ``k``; ``k = 1``, which releases records unchanged, is the original data), with the same
    seed and splits; those points are read from it instead of being trained again.
    """
    feasible = max_feasible_k(ds, sensitive, keep)
    points = []
    for k in sorted({int(k) for k in cfg.curve_k if int(k) <= feasible}):
        result = (known or {}).get(k)
        reid = utility = None
        if result is not None:
            reid = _best_of(result[sensitive], cfg.curve_attackers)
            utility = _best_of(result[keep], cfg.curve_attackers)
        if reid is None or utility is None:
            anonymizer = fit_anonymizer(x, ds, sensitive, keep, cfg, k=k, representation=representation)
            released = release(anonymizer, x, ds, sensitive, keep, cfg.batch_size)
            result = attack(released_dataset(ds, released), [sensitive, keep], cfg.curve_attackers, cfg.seed)
            reid, utility = result[sensitive]["best"], result[keep]["best"]
        points.append({"k": k, "reid": reid, "utility": utility,
                       "reid_chance": result[sensitive]["chance"], "utility_chance": result[keep]["chance"]})
    return points


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def build_report(data_name: str, sensitive: str, keep: str, other: str | None, cfg: AnonymizeConfig, evaluation: dict,
                 achieved_k: dict, curve: list[dict]):
    from privkit.evaluate.attackers import attacker_table
    from privkit.evaluate.report import Report, new_figure

    reid, eer, utility = evaluation["reidentification"], evaluation["eer"], evaluation["utility"]
    report = Report(f"Anonymization of {data_name}: hide {sensitive}, keep {keep}", "anonymize")
    report.update_metrics({"reidentification": reid, "eer": eer, "achieved_k": achieved_k, "utility": utility,
                           "curve": curve, "attackers": evaluation["attackers"],
                           "config": {k: v for k, v in asdict(cfg).items() if k != "extra"} | cfg.extra})
    keep_u = utility[keep]
    dropped = reid["released"] < reid["original"]
    report.verdict(
        f"Re-identification (closed-set {sensitive} accuracy of fresh attackers) {reid['original']:.3f} -> "
        f"{reid['released']:.3f} (chance {reid['chance']:.3f}); {keep} accuracy {keep_u['original']:.3f} -> "
        f"{keep_u['released']:.3f} (chance {keep_u['chance']:.3f}); every released record mixes at least "
        f"{achieved_k['min']} distinct identities.", ok=bool(dropped))
    report.heading("Re-identification risk")
    report.table("identity risk, original vs released",
                 ["measure", "original", "released", "chance / no information"],
                 [[f"closed-set {sensitive} accuracy (best fresh attacker)", reid["original"], reid["released"], reid["chance"]],
                  ["verification EER from embedding distances", eer["original"], eer["released"], 0.5]])
    report.text("Closed-set: attackers are trained from scratch and tested on disjoint records of the same people. "
                "EER: representation vectors standardised and projected on their first 64 principal components; "
                "Euclidean distances of same-person vs different-person pairs; 50% means distances carry no identity.")
    headers, rows = attacker_table(evaluation["attackers"]["released"], evaluation["attackers"]["original"])
    report.table("held-out accuracy of fresh attackers on the released data", headers, rows)
    report.heading("k-anonymity actually achieved")
    report.table("distinct identities per set", ["requested k", "min", "mean", "max", "fraction below k", "records"],
                 [[achieved_k["requested"], achieved_k["min"], achieved_k["mean"], achieved_k["max"],
                   achieved_k["fraction_below_k"], achieved_k["n_records"]]])
    report.heading("Utility")
    report.table("attribute accuracy (best fresh attacker, identity-disjoint split)", ["attribute", "role", "original", "released", "chance"],
                 [[a, "kept (used for relevance)" if a == keep else "not used for relevance", u["original"], u["released"], u["chance"]]
                  for a, u in utility.items()])
    if curve:
        report.heading("Privacy-utility curve over k")
        report.table(f"attackers: {', '.join(cfg.curve_attackers)}", ["k", f"{sensitive} accuracy", f"{keep} accuracy"],
                     [[p["k"], p["reid"], p["utility"]] for p in curve])
        fig = new_figure(6.0, 3.5)
        ax = fig.add_subplot(1, 1, 1)
        ks = [p["k"] for p in curve]
        ax.plot(ks, [p["reid"] for p in curve], "o-", color="tab:red", label=f"re-identification ({sensitive})")
        ax.plot(ks, [p["utility"] for p in curve], "s-", color="tab:blue", label=f"utility ({keep})")
        ax.axhline(curve[0]["reid_chance"], color="tab:red", ls=":", lw=1, label=f"{sensitive} chance")
        ax.axhline(curve[0]["utility_chance"], color="tab:blue", ls=":", lw=1, label=f"{keep} chance")
        ax.set_xlabel("k (identities per set)")
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="best")
        report.figure("privacy-utility curve: accuracy of fresh attackers against k", fig)
    report.text("The saved anonymizer in this run folder contains raw records (the reference pool): store it like "
                "the original data and never publish it. Do not release the same records twice with different seeds.",
                title="Handling")
    return report


def anonymize_run(data_spec: str, sensitive: str, keep: str, out: str | Path, cfg: AnonymizeConfig | None = None, *,
                  dataset: AttributeDataset | None = None, size: int | None = None, release_dir: str | Path | None = None,
                  overwrite: bool = False) -> Path:
    """Fit, release, evaluate and report; returns the finished run folder.

    Every input is checked before the run folder (or the release folder) is created.
    """
    from privkit.anonymize.artifact import save_anonymizer
    from privkit.data import load_dataset
    from privkit.io.rundir import RunDir

    cfg = cfg or AnonymizeConfig()
    ds = dataset if dataset is not None else load_dataset(data_spec, size=size)
    other = check_inputs(ds, sensitive, keep, cfg)
    if release_dir is not None and Path(release_dir).expanduser().exists():
        raise ConfigError(f"--release {release_dir} already exists; choose a new folder or remove it")
    config = {"data": str(data_spec), "size": size, "sensitive": sensitive, "keep": keep, "other": other,
              "release": None if release_dir is None else str(release_dir),
              **{k: v for k, v in asdict(cfg).items() if k not in ("extra", "other")}}
    with RunDir(out, "anonymize", config, overwrite=overwrite) as run:
        representation = representation_for(ds.schema)
        x, _ = ds.materialize()
        run.log(f"fitting k={cfg.k} weight={cfg.weight} top_features={cfg.top_features} on {len(ds)} records")
        anonymizer = fit_anonymizer(x, ds, sensitive, keep, cfg, representation=representation)
        released = release(anonymizer, x, ds, sensitive, keep, cfg.batch_size, release_dir)
        try:
            run.log("evaluating the release")
            evaluation = evaluate_release(ds, x, released, sensitive, keep, other, cfg, representation)
            known = {int(cfg.k): evaluation["attackers"]["released"]}
            if ds.schema.modality != "audio":  # k = 1 returns records unchanged (audio would still be re-synthesised)
                known[1] = evaluation["attackers"]["original"]
            curve = privacy_utility_curve(ds, x, sensitive, keep, cfg, representation, known)
            report = build_report(str(data_spec), sensitive, keep, other, cfg, evaluation, anonymizer.achieved_k_, curve)
            save_anonymizer(run.path, anonymizer, ds.schema, sensitive=sensitive, keep=keep, config=config,
                            metrics={"reidentification": evaluation["reidentification"], "utility": evaluation["utility"],
                                     "achieved_k": anonymizer.achieved_k_},
                            data_fingerprint=ds.fingerprint())
            report.write(run.path)
            run.finish()
        except BaseException:
            # the run folder is removed by RunDir; a release without its finished run would look valid
            if release_dir is not None:
                shutil.rmtree(Path(release_dir).expanduser(), ignore_errors=True)
            raise
    return run.path


__all__ = ["AnonymizeConfig", "anonymize_run", "attack", "check_inputs", "embeddings", "equal_error_rate", "evaluate_release",
           "fit_anonymizer", "max_feasible_k", "privacy_utility_curve", "release", "released_batches",
           "representation_for", "verification_eer"]
