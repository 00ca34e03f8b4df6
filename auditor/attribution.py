"""Attribution: which deployment each GPU line of a bill belongs to.

A line is claimed, in this order, by: the static mapping (`billing.attribution.resources`), the
deployments that list its resource id (`price.resource_ids`), the deployments on the host it is
(`billing.attribution.hosts`, or a resource named like a host the deployments' GPUs are on: a node
name), the deployments whose `price.tags` / `price.labels` it carries (Kubernetes labels included,
their prefixes ignored), and finally the tag keys (`billing.attribution.tag_keys`: `deployment`
names a deployment; `team` and `cost-center` name the one deployment with that team or cost center).

An instance shared by several deployments is split by their share of its GPUs; what nobody claims
stays *unattributed* (deployment None), never dropped. The parts of a line add up to the line
exactly: deployments + unattributed = the bill's GPU lines, to the cent and beyond.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal

from auditor.config import (
    AwsPrice,
    Config,
    DeploymentConfig,
    FocusPrice,
    GcpPrice,
    OnPremPrice,
    StaticPrice,
)
from auditor.model import CostLine

SHARE_QUANTUM = Decimal("1e-12")
"""Split parts are rounded to this; the last part takes the remainder, so the parts add up exactly."""

KUBERNETES_PREFIXES = ("k8s-label/", "kubernetes.io/", "aws:eks:", "user:", "label:", "goog-k8s-")
"""Prefixes clouds put before Kubernetes labels and user tags in a bill's `Tags` (GCP `k8s-label/app`,
AWS split cost allocation `aws:eks:deployment`, AWS user tags `user:team`): `app` matches any of them."""

_MONEY_FIELDS = ("amount_usd", "billed_cost", "effective_cost", "list_cost", "usage_hours", "gpu_hours")


@dataclass(frozen=True, slots=True)
class Claim:
    deployment: str
    gpus: Decimal
    """The claimant's weight: its GPUs on the instance (or 1 where GPUs are not known)."""


@dataclass(frozen=True, slots=True)
class Attribution:
    lines: list[CostLine]
    warnings: list[str]


def line_tags(line: CostLine) -> dict[str, str]:
    """The line's tags, with each Kubernetes-prefixed key also under its bare name."""
    if not line.tags_json:
        return {}
    raw = json.loads(line.tags_json)
    tags = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    for key, value in list(tags.items()):
        for prefix in KUBERNETES_PREFIXES:
            if key.startswith(prefix):
                tags.setdefault(key[len(prefix) :], value)
    return tags


class Attributor:
    """Attributes a bill's GPU lines to the configured deployments priced by a bill."""

    def __init__(self, config: Config, gpus_per_instance: Callable[[str], int | None]) -> None:
        self.config = config
        self.settings = config.billing.attribution
        self.gpus_per_instance = gpus_per_instance
        self.billed = [d for d in config.deployments if not isinstance(d.price, StaticPrice | OnPremPrice)]
        self.by_name = {d.name: d for d in self.billed}

    def attribute(self, lines: Sequence[CostLine]) -> Attribution:
        out: list[CostLine] = []
        tag_matched: set[str] = set()
        seen_keys: set[str] = set()
        tags_by_text: dict[str | None, dict[str, str]] = {}  # a bill repeats a few tag sets many times
        for line in lines:
            tags = tags_by_text.get(line.tags_json)
            if tags is None:
                tags = tags_by_text[line.tags_json] = line_tags(line)
                if line.tags_json:
                    seen_keys.update(json.loads(line.tags_json))
            claims = self._claims(line, tags, tag_matched)
            out.extend(split(line, claims, self._instance_gpus(line, claims)))
        return Attribution(out, self._warnings(lines, out, tag_matched, seen_keys))

    # -- who claims a line ----------------------------------------------------------------------

    def _candidates(self, line: CostLine) -> list[DeploymentConfig]:
        return [d for d in self.billed if _reads_source(d, line)]

    def _claims(self, line: CostLine, tags: dict[str, str], tag_matched: set[str]) -> list[Claim]:
        candidates = self._candidates(line)
        names = {d.name for d in candidates}
        ids = _resource_names(line.resource)
        for rid in ids:
            owner = self.settings.resources.get(rid)
            if owner is not None and owner in names:
                return [Claim(owner, Decimal(1))]
        listed = [d for d in candidates if ids & set(_resource_ids(d))]
        if listed:
            return [Claim(d.name, Decimal(d.billed_gpus)) for d in listed]
        hosts = {self.settings.hosts[rid] for rid in ids if rid in self.settings.hosts} or ids
        on_host = [(d, _gpus_on(d, hosts)) for d in candidates]
        if any(n for _, n in on_host):
            return [Claim(d.name, Decimal(n)) for d, n in on_host if n]
        tagged = [d for d in candidates if (want := _wanted_tags(d)) and _has_tags(tags, want)]
        if tagged:
            tag_matched.update(d.name for d in tagged)
            return [Claim(d.name, Decimal(d.billed_gpus)) for d in tagged]
        for key in self.settings.tag_keys:
            value = tags.get(key)
            if value is None:
                continue
            owner = self._owner_by_tag(key, value, candidates)
            if owner is not None:
                tag_matched.add(owner)
                return [Claim(owner, Decimal(1))]
        return []

    def _owner_by_tag(self, key: str, value: str, candidates: Sequence[DeploymentConfig]) -> str | None:
        normal = key.lower().replace("_", "-")
        if normal in {"team", "cost-center", "costcenter"}:
            attribute = "team" if normal == "team" else "cost_center"
            owners = [d.name for d in candidates if getattr(d, attribute) == value]
            return owners[0] if len(owners) == 1 else None
        return value if any(d.name == value for d in candidates) else None

    def _instance_gpus(self, line: CostLine, claims: Sequence[Claim]) -> Decimal | None:
        """GPUs of the instance the line bills, where a split needs them (several or partial claims)."""
        if len(claims) == 1 and claims[0].gpus == 1:
            return None
        known = self.gpus_per_instance(line.usage_type)
        if known is None:
            for claim in claims:
                price = self.by_name[claim.deployment].price
                per = getattr(price, "gpus_per_instance", None)
                if per:
                    known = per
                    break
        return None if known is None else Decimal(known)

    # -- what did not match ---------------------------------------------------------------------

    def _warnings(
        self,
        lines: Sequence[CostLine],
        out: Sequence[CostLine],
        tag_matched: set[str],
        seen_keys: set[str],
    ) -> list[str]:
        if not lines:
            return []
        keys = ", ".join(sorted(seen_keys)) or "none"
        warnings = []
        for deployment in self.billed:
            want = _wanted_tags(deployment)
            if (
                want
                and deployment.name not in tag_matched
                and not any(x.deployment == deployment.name for x in out)
            ):
                shown = ", ".join(f"{k}={v}" for k, v in sorted(want.items()))
                warnings.append(
                    f"deployment {deployment.name}: no GPU line carries its tags {shown}; "
                    f"tag keys on the bill's GPU lines: {keys}"
                )
        unclaimed = [x for x in out if x.deployment is None]
        if unclaimed and not any(k in seen_keys for k in self.settings.tag_keys):
            usd = sum((x.amount_usd for x in unclaimed), Decimal(0))
            warnings.append(
                f"no GPU line carries a tag key of billing.attribution.tag_keys "
                f"({', '.join(self.settings.tag_keys)}); tag keys on the bill's GPU lines: {keys}; "
                f"{len(unclaimed)} lines (${usd:,.2f}) stay unattributed"
            )
        return warnings


def split(line: CostLine, claims: Sequence[Claim], instance_gpus: Decimal | None) -> list[CostLine]:
    """The line in parts, one per claimant by its GPU share (the rest unattributed when the instance
    has more GPUs than are claimed); the parts' amounts add up exactly to the line's."""
    if not claims:
        return [_owned(line, None)]
    claimed = sum((c.gpus for c in claims), Decimal(0))
    total = claimed if instance_gpus is None or instance_gpus < claimed else instance_gpus
    if len(claims) == 1 and total == claimed:
        return [_owned(line, claims[0].deployment)]
    shares: list[tuple[str | None, Decimal]] = [(c.deployment, c.gpus / total) for c in claims]
    if total > claimed:
        shares.append((None, (total - claimed) / total))
    parts: list[CostLine] = []
    given = dict.fromkeys(_MONEY_FIELDS, Decimal(0))
    for i, (owner, share) in enumerate(shares):
        last = i == len(shares) - 1
        values: dict[str, Decimal | None] = {}
        for name in _MONEY_FIELDS:
            whole: Decimal | None = getattr(line, name)
            if whole is None:
                values[name] = None
                continue
            part = whole - given[name] if last else (whole * share).quantize(SHARE_QUANTUM, ROUND_HALF_EVEN)
            given[name] += part
            values[name] = part
        parts.append(replace(_owned(line, owner), **values))  # type: ignore[arg-type]
    return parts


def _owned(line: CostLine, deployment: str | None) -> CostLine:
    if line.deployment == deployment:
        return line
    return replace(line, deployment=deployment, line_key="")  # the key includes the deployment


def _reads_source(deployment: DeploymentConfig, line: CostLine) -> bool:
    price = deployment.price
    if isinstance(price, FocusPrice):
        return price.billing_source is None or price.billing_source == line.source
    if isinstance(price, AwsPrice):
        return price.account_id is None or price.account_id in {line.account, line.sub_account}
    if isinstance(price, GcpPrice):
        return price.project_id is None or price.project_id == line.sub_account
    return False


def _resource_names(resource: str) -> set[str]:
    """A resource id and its last path part (an ARN's instance id, a GCP self-link's instance name)."""
    if not resource:
        return set()
    last = resource.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return {resource, last}


def _resource_ids(deployment: DeploymentConfig) -> list[str]:
    price = deployment.price
    return list(price.resource_ids) if isinstance(price, AwsPrice | FocusPrice) else []


def _wanted_tags(deployment: DeploymentConfig) -> dict[str, str]:
    price = deployment.price
    if isinstance(price, AwsPrice | FocusPrice):
        return dict(price.tags)
    if isinstance(price, GcpPrice):
        return dict(price.labels)
    return {}


def _has_tags(tags: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(tags.get(k) == v for k, v in wanted.items())


def _gpus_on(deployment: DeploymentConfig, hosts: set[str]) -> int:
    """The deployment's GPUs on these hosts (a selector without indexes: its configured GPU count)."""
    count = 0
    for selector in deployment.gpus:
        if selector.host in hosts:
            count += len(selector.indexes) if selector.indexes is not None else deployment.billed_gpus
    return count
