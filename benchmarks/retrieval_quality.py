"""Retrieval quality on real text: recall@6 of the right template, coverage pooling on vs off.

    .venv/bin/python benchmarks/retrieval_quality.py --documents 200

The check is built from the packaged Wikipedia leads, where the answering document of each template is
known by construction:
- Template bank: one template per lead (~10k), whose compatible-document description is made from the
  lead's first sentence with the article's title removed ("A text about someone who was a German-born
  theoretical physicist ..."), so it says what the document covers without naming it.
- Multi-topic documents: four leads on unrelated subjects joined into one text of ~600-1,000 tokens (a
  web page covering several things). Its right templates are the four leads' templates; recall@6 is
  the share of those four among the 6 templates the match stage returns.
- Single-topic documents: one lead each, its right template its own (a sanity check: every method
  should find it).

Methods compared on the same documents and index: the usual plain pass (one mean-pooled vector, text
truncated at the model's 256-token window), a global vector over all windows (K=0), and Gaussian coverage
pooling (global + K=10 local vectors), each with MMR off (lambda 1) and with the default (0.7).
"""

from __future__ import annotations

import argparse
import random
import re
import time

import numpy as np

from fineinstructions.config import stage_config
from fineinstructions.io.sources import wikipedia_documents
from fineinstructions.records import Document, Template
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.index import TemplateIndex
from fineinstructions.stages.match import MatchStage
from fineinstructions.stages.registry import stage_class

TOP_K = 6


def description(title: str, text: str) -> str | None:
    """The lead's first sentence with the title taken out, as a compatible-document description."""
    first = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
    stripped = re.sub(re.escape(title), "", first, flags=re.IGNORECASE)
    stripped = re.sub(r"^\W*(is|was|are|were)\b", "something that is", stripped.strip(), flags=re.IGNORECASE)
    stripped = " ".join(stripped.split())
    return f"A text about {stripped}" if len(stripped.split()) >= 6 else None


class PlainMatch(MatchStage):
    """The usual baseline: one truncated mean-pooled vector per document."""

    def process(self, batch):
        vectors = self.embedder.encode([d.text for d in batch])
        scores, ids = self.index.search(vectors, self.per_vector_k)
        return [self.choose(scores[i : i + 1], ids[i : i + 1])[0] for i in range(len(batch))]


def recall(stage: MatchStage, documents: list[Document], targets: list[set[str]], index: TemplateIndex) -> float:
    if isinstance(stage, PlainMatch):
        chosen = stage.process(documents)
        found = [set(index.template_ids_at([c[0] for c in picks])) for picks in chosen]
    else:
        result = stage.process(documents)
        found = [set() for _ in documents]
        position = {d.document_id: i for i, d in enumerate(documents)}
        for match in result.records:
            found[position[match.document_id]].add(match.template_id)
    return float(np.mean([len(f & t) / len(t) for f, t in zip(found, targets, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=200, help="multi-topic documents (and as many single)")
    parser.add_argument("--topics", type=int, default=4, help="leads joined per multi-topic document")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # One context serves every variant the embedder (the match section's defaults) and, once built, the index.
    context = StageContext(stage_config({}))
    embedder = context.embedder
    leads = [d for d in wikipedia_documents() if 200 <= len(d.text) <= 2500]
    templates = []
    for lead in leads:
        text = description(lead.title, lead.text)
        if text:
            templates.append(Template(template_id=lead.document_id, template=f"Tell me about <fi>{lead.title}</fi>.",
                                      compatible_document_description=text))
    start = time.perf_counter()
    index = TemplateIndex.build(templates, embedder, "Flat")
    print(f"bank: {index.ntotal} templates from Wikipedia leads, indexed in {time.perf_counter() - start:.0f} s")
    context.use_index(index, "retrieval_quality")

    rng = random.Random(args.seed)
    template_ids = {t.template_id for t in templates}
    with_template = [lead for lead in leads if lead.document_id in template_ids]
    picks = rng.sample(with_template, args.documents * args.topics)
    multi = [Document(document_id=f"multi-{i}", text="\n\n".join(p.text for p in picks[i::args.documents]))
             for i in range(args.documents)]
    multi_targets = [{p.document_id for p in picks[i::args.documents]} for i in range(args.documents)]
    single = [Document(document_id=p.document_id, text=p.text) for p in picks[: args.documents]]
    single_targets = [{p.document_id} for p in picks[: args.documents]]
    tokens = embedder.model.tokenizer([d.text for d in multi], add_special_tokens=False, verbose=False)["input_ids"]
    print(f"{len(multi)} documents of {args.topics} topics (mean {np.mean([len(t) for t in tokens]):.0f} tokens), "
          f"{len(single)} single-topic; recall@{TOP_K} of the right templates")

    print(f"{'method':<44}{'MMR':>5}{'multi-topic':>13}{'single':>9}{'docs/s':>9}")
    common = {"top_k": TOP_K, "max_template_uses": None, "min_document_words": 1}
    for label, chunks, plain in (("plain pass, truncated (usual)", 0, True),
                                 ("global vector over all windows (K=0)", 0, False),
                                 ("Gaussian coverage pooling (K=10)", 10, False)):
        for mmr in (1.0, 0.7):
            config = stage_config({"match": {"coverage_chunks": chunks, "mmr_lambda": mmr, **common}})
            stage = (PlainMatch if plain else stage_class("match")).from_config(config, context)
            start = time.perf_counter()
            multi_recall = recall(stage, multi, multi_targets, index)
            rate = len(multi) / (time.perf_counter() - start)
            single_recall = recall(stage, single, single_targets, index)
            print(f"{label:<44}{mmr:>5.1f}{multi_recall:>13.3f}{single_recall:>9.3f}{rate:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
