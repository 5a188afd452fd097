"""Locust users for bert-serve, weighted like a real mix: mostly single-sentence embeddings,
some batch and token-level requests, fill-mask, classification and the OpenAI-compatible route
(fill-mask and classification users first ask /info whether the model has the head).

Sentences come from $BERTSERVE_LOADTEST_SENTENCES (one per line), else the STS Benchmark in
../shared/corpora when present, else a built-in list. Set $BERTSERVE_API_KEY if the server
needs one.

  locust -f loadtest/locustfile.py --host http://127.0.0.1:8000
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

from locust import FastHttpUser, between, task
from locust.exception import StopUser

BUILT_IN = [
    "A man is playing a guitar.",
    "The cat sat on the warm windowsill.",
    "Stock markets fell sharply on Monday.",
    "Two dogs are running through a field.",
    "Photosynthesis converts light energy into chemical energy.",
    "北京是中华人民共和国的首都。",
    "She said she would come back tomorrow.",
    "The committee will review all applications before the end of March.",
]


def load_sentences() -> list[str]:
    path = os.environ.get("BERTSERVE_LOADTEST_SENTENCES")
    if path:
        return [s for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]
    sts = Path(__file__).resolve().parents[2] / "shared/corpora/stsbenchmark/sts-test.csv"
    if sts.is_file():
        with open(sts, encoding="utf-8") as handle:
            rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [s for row in rows for s in row[5:7] if s.strip()]
    return BUILT_IN


SENTENCES = load_sentences()
# fill-mask refuses inputs over the model's length (it never truncates a mask away)
SHORT = [s for s in SENTENCES if len(s) <= 120] or BUILT_IN
HEADERS = (
    {"Authorization": f"Bearer {os.environ['BERTSERVE_API_KEY']}"}
    if os.environ.get("BERTSERVE_API_KEY")
    else {}
)


def sentence() -> str:
    return random.choice(SENTENCES)


def with_mask(text: str) -> str:
    words = text.split()
    words[random.randrange(len(words))] = "[MASK]"
    return " ".join(words)


class EmbedUser(FastHttpUser):
    """Most traffic: one sentence per request, as a search front end sends it."""

    weight = 6
    wait_time = between(0.0, 0.05)

    @task
    def embed_one(self) -> None:
        self.client.post("/embed", json={"inputs": sentence()}, headers=HEADERS)


class BatchEmbedUser(FastHttpUser):
    """Indexing jobs: 32 sentences per request."""

    weight = 1
    wait_time = between(0.0, 0.1)

    @task
    def embed_batch(self) -> None:
        self.client.post(
            "/embed", json={"inputs": [sentence() for _ in range(32)]}, headers=HEADERS
        )


class TokenEmbedUser(FastHttpUser):
    """Token-level output, e.g. for span search or NER features."""

    weight = 1
    wait_time = between(0.0, 0.1)

    @task
    def embed_tokens(self) -> None:
        self.client.post(
            "/embed",
            json={"inputs": sentence(), "output": "tokens", "encoding_format": "base64"},
            headers=HEADERS,
        )


class CapabilityUser(FastHttpUser):
    """A user whose route only some models serve: it asks /info first and stops when the
    model cannot do it (instead of counting 424s as failures)."""

    abstract = True
    capability = ""
    weight = 1
    wait_time = between(0.0, 0.1)

    def on_start(self) -> None:
        info = self.client.get("/info", headers=HEADERS).json()
        if not info.get("capabilities", {}).get(self.capability, False):
            raise StopUser()


class FillMaskUser(CapabilityUser):
    capability = "fill_mask"

    @task
    def fill_mask(self) -> None:
        self.client.post(
            "/fill-mask",
            json={"inputs": with_mask(random.choice(SHORT)), "top_k": 5},
            headers=HEADERS,
        )


class ClassifyUser(CapabilityUser):
    """A fine-tuned classifier (bert-finetune): sentence pairs."""

    capability = "classify"

    @task
    def classify(self) -> None:
        self.client.post("/classify", json={"inputs": [[sentence(), sentence()]]}, headers=HEADERS)


class OpenAIUser(FastHttpUser):
    """An OpenAI client: it names the model, as /info calls the default one (a name the
    server does not serve is a 404)."""

    weight = 1
    wait_time = between(0.0, 0.1)
    model = ""

    def on_start(self) -> None:
        self.model = self.client.get("/info", headers=HEADERS).json()["model"]

    @task
    def openai_embeddings(self) -> None:
        self.client.post(
            "/v1/embeddings",
            json={"input": [sentence(), sentence()], "model": self.model},
            headers=HEADERS,
        )
