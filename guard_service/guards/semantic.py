"""Semantic detector (prompt phase): the prompt's views embedded (frontend/classifier.py) against a faiss index of
what the policy is about, with a threshold calibrated on held-out phrasings and generic negatives. A score at or
above the confident threshold matches alone (`match`); between the calibrated threshold and it, only with
lexical evidence (`candidate`). Compiles classifier.faiss and classifier.json, which also carries the names,
facts and evidence phrases the name, evidence and leak components read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from guard_service.guards.base import Compiled, CompileInput, Finding, GuardComponent, Level, PromptText
from guard_service.policy import classifier_data, forbidden
from guard_service.policy.artifacts import ArtifactWriter, ClassifierFile, PolicyArtifact
from guard_service.policy.request import UnlearningRequest

CONFIDENT = 0.85  # a semantic score this high matches without lexical evidence


@dataclass(frozen=True)
class Semantic:
    index: Any  # faiss.Index
    threshold: float
    confident_threshold: float


class SemanticDetector(GuardComponent):
    name = "semantic"
    stage = "classifier"

    def compile(self, inp: CompileInput, out: ArtifactWriter) -> Compiled:
        spec, expansion = inp.spec, inp.expansion
        # The documents' facts (policy/knowledge.py, knowledge.json) are not indexed here: as statements they
        # drew 47% of RWKU's neighbour questions (5 targets, measured while building bench/knowledge.py),
        # questions about what surrounds the target rather than about it. The described detector and the
        # output side read them from knowledge.json.
        statements = [*spec.facts, *spec.example_prompts, *expansion.facts]
        names = [spec.target, *spec.aliases, *expansion.names]
        clf = classifier_data.build(spec.target, spec.kind, [*spec.aliases, *expansion.names], statements,
                                    spec.retain_examples, spec.strength.classifier_fpr, spec.strength.steer_threshold)
        refuse_at = spec.strength.refuse_threshold or min(0.95, clf.threshold + 0.5 * (1 - clf.threshold))
        known = [*spec.facts, spec.description, *expansion.facts]
        out.write_classifier(ClassifierFile(
            texts=clf.texts, threshold=clf.threshold, refuse_threshold=refuse_at,
            confident_threshold=max(refuse_at, CONFIDENT), aliases=names, facts=[*spec.facts, *expansion.facts],
            evidence=forbidden.evidence_phrases(names, known),
            weak_evidence=forbidden.weak_evidence_words(names, known)), clf.index)
        return Compiled(stats={"classifier_texts": len(clf.texts)},
                        calibration={**clf.calibration, "refuse_threshold": refuse_at})

    def load(self, artifact: PolicyArtifact, spec: UnlearningRequest) -> Semantic:
        clf = artifact.classifier
        return Semantic(artifact.classifier_index(), clf.threshold, clf.confident_threshold)

    def scan(self, part: Semantic, prompt: PromptText) -> Finding:
        sims, _ = part.index.search(prompt.vectors, 1)
        score = float(np.max(sims))
        if score >= part.confident_threshold:
            return Finding(Level.match, f"semantic:{score:.3f}>={part.confident_threshold:.3f}", score)
        if score >= part.threshold:
            return Finding(Level.candidate, f"semantic:{score:.3f}>={part.threshold:.3f}", score)
        return Finding(None, score=score)
