"""Run reports, dataset cards and publishing, on real run folders made by the pipeline with a scripted backend."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.cli import app
from fineinstructions.config import BackendConfig, PipelineConfig, RunConfig, SourceConfig
from fineinstructions.pipeline import Pipeline
from fineinstructions.reporting import ReportError, load_run, push_to_hub, render_html, stage_dataset, write_report
from tests.test_pipeline import DOCUMENTS as PIPELINE_DOCUMENTS
from tests.test_pipeline import QUERIES, scripted

runner = CliRunner()
SECTIONS = ("quality", "funnel", "judge-scores", "coverage", "match-floor", "templates", "throughput", "samples",
            "config")
# Two documents a shard (the second shard is where the unfinished run crashes); one carries a script tag.
DOCUMENTS = [(name, text.replace("Acid rain is rain", "Acid rain is rain <script>alert('owned')</script>", 1))
             for name, text in PIPELINE_DOCUMENTS]


def judged(score: int, crash_on: str | None = None):
    """The scripted model, with every pair judged `score` (and a crash on the pairs of one document)."""
    def respond(conversation) -> str:
        if conversation[0]["content"].startswith("You are a strict judge"):
            if crash_on and crash_on in conversation[-1]["content"]:
                raise RuntimeError("engine died")
            return f"<feedback>Scripted.</feedback><score>{score}</score>"
        return scripted(conversation)
    return respond


def make_run(root: Path, name: str, responder) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    queries, documents = root / "queries.jsonl", root / "documents.jsonl"
    queries.write_text("".join(json.dumps({"text": q, "id": f"q{i}"}) + "\n" for i, q in enumerate(QUERIES)))
    documents.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in DOCUMENTS))
    cfg = PipelineConfig(queries=SourceConfig(path=str(queries)), documents=SourceConfig(path=str(documents)),
                         generator=BackendConfig(model="scripted"),
                         run=RunConfig(output_dir=str(root / name), shard_size=2, batch_size=2, shards_in_flight=1))
    cfg.match.top_k = 2
    pipeline = Pipeline(cfg, show_progress=False)
    pipeline.backends.register(cfg.generator, FakeBackend(responder, model_id="scripted"))
    pipeline.run()
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished run with pairs, a finished run that kept none, and a run that crashed in its second shard."""
    root = tmp_path_factory.mktemp("runs")
    out = {"full": make_run(root, "full", judged(5)), "empty": make_run(root, "empty", judged(2))}
    with pytest.raises(RuntimeError, match="engine died"):
        make_run(root, "unfinished", judged(5, crash_on="fluid dynamics"))
    out["unfinished"] = root / "unfinished"
    return out


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "the card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def flat(text: str) -> str:
    """Console output without the line wrapping rich adds."""
    return " ".join(text.split())


def pngs(html: str) -> list[Image.Image]:
    images = []
    for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()  # decodes the whole image: raises on a broken PNG
        images.append(image)
    return images


def test_html_report_has_every_section_with_embedded_plots(runs, tmp_path):
    html_path, card_path = write_report(runs["full"], tmp_path / "report")
    html = html_path.read_text()
    summary = json.loads((runs["full"] / "summary.json").read_text())
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    images = pngs(html)
    assert len(images) == 6 and all(img.format == "PNG" and img.width > 300 for img in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained: no network assets
    floor = html.split('<section id="match-floor">')[1].split("</section>")[0]  # candidates by match score
    assert "null rate" in floor and "kept rate" in floor and "<code>match.min_score</code>" in floor
    assert "Finished run" in html and "has not finished" not in html
    for name, stage in summary["stages"].items():  # the funnel table holds every stage's counts and reasons
        assert f"<td>{name}</td><td class=\"n\">{stage['rows_in']}</td><td class=\"n\">{stage['rows_out']}</td>" \
            in html
        for reason, count in stage["dropped"].items():
            assert f"{reason}: {count}" in html
    assert summary["config_fingerprint"] in html
    assert (runs["full"] / "config.yaml").read_text().splitlines()[1].strip() in html
    view = load_run(runs["full"])
    assert view.quality == summary["quality"]  # recomputed from the shards, equal to the run's own summary
    assert card_path.is_file()


def test_pair_text_is_escaped(runs):
    view = load_run(runs["full"])
    assert any("<script>" in p.answer for p in view.pairs), "the scripted run must keep the pair with <script>"
    html = render_html(view, sample_size=len(view.pairs))
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in html


def test_dataset_card_front_matter_counts_and_fingerprint(runs, tmp_path):
    from huggingface_hub import DatasetCard

    _, card_path = write_report(runs["full"], tmp_path / "report", license="cc-by-4.0")
    card = card_path.read_text()
    meta = front_matter(card)
    summary = json.loads((runs["full"] / "summary.json").read_text())
    pairs = summary["quality"]["pairs"]
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    assert "text-generation" in meta["task_categories"] and meta["pretty_name"]
    assert DatasetCard(card).data.to_dict()["license"] == "cc-by-4.0"  # the Hub library reads it too
    assert f"{pairs} synthetic instruction-answer pairs" in card
    for name, stage in summary["stages"].items():
        assert f"| {name} | {stage['rows_in']} | {stage['rows_out']} |" in card
    assert f"`{summary['config_fingerprint']}`" in card
    assert (runs["full"] / "config.yaml").read_text().strip() in card
    assert "Patel, Ajay and Raffel, Colin and Callison-Burch, Chris" in card and "2026" in card
    assert "instantiate-v2" in card and "judge-v2" in card and "| `instantiated_instruction` |" in card


def test_run_with_zero_kept_pairs(runs, tmp_path):
    html_path, card_path = write_report(runs["empty"], tmp_path / "report")
    html, card = html_path.read_text(), card_path.read_text()
    assert "No pairs were kept" in html and len(pngs(html)) == 6
    assert front_matter(card)["size_categories"] == ["n<1K"]
    assert "0 synthetic instruction-answer pairs" in card and "| filter |" in card
    staged = stage_dataset(runs["empty"], tmp_path / "staged")
    assert sum(pq.read_metadata(p).num_rows for p in (staged / "data").glob("*.parquet")) == 0


def test_unfinished_run_is_reported_and_not_pushed_by_default(runs, tmp_path):
    run = runs["unfinished"]
    assert not (run / "summary.json").exists()
    view = load_run(run)
    assert not view.finished and view.shards["filter"] == 1 and view.pairs  # the first shard got through
    html_path, card_path = write_report(run, tmp_path / "report")
    html = html_path.read_text()
    assert "This run has not finished" in html and "filter 1" in html and len(pngs(html)) == 6
    assert "Unfinished run" in card_path.read_text()
    with pytest.raises(ReportError, match="has not finished"):
        stage_dataset(run, tmp_path / "staged")
    result = runner.invoke(app, ["push", str(run), "me/data", "--to-dir", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "allow-unfinished" in flat(result.output)
    staged = stage_dataset(run, tmp_path / "staged", allow_unfinished=True)
    assert [p.name for p in (staged / "data").iterdir()] == ["rank-00000-shard-000000.parquet"]  # before dedup


def test_cli_report_and_push_to_dir_layout(runs, tmp_path):
    from datasets import load_dataset

    result = runner.invoke(app, ["report", str(runs["full"]), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "README.md").is_file()

    target = tmp_path / "upload"
    result = runner.invoke(app, ["push", str(runs["full"]), "me/fine", "--to-dir", str(target)])
    assert result.exit_code == 0, result.output
    parts = {f"{p.parent.name}-{p.name}": p for p in (runs["full"] / "dataset").glob("rank-*/part-*.parquet")}
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "data"]
    assert sorted(p.name for p in (target / "data").iterdir()) == sorted(parts) == ["rank-00000-part-000000.parquet"]
    for name, part in parts.items():
        assert (target / "data" / name).read_bytes() == part.read_bytes()
    card = (target / "README.md").read_text()
    assert front_matter(card)["pretty_name"] == "fine" and 'load_dataset("me/fine")' in card
    # The datasets library reads the staged folder as the Hub would: the card's configs point at the parts.
    # (a fresh cache: datasets names its cache after the folder and the files' names, sizes and times, so
    # another run staged into a folder of the same name could be served from an earlier test's cache)
    rows = load_dataset(str(target), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert rows.num_rows == json.loads((runs["full"] / "summary.json").read_text())["quality"]["pairs"]

    result = runner.invoke(app, ["push", str(runs["full"]), "me/fine", "--to-dir", str(target)])  # restage: fine
    assert result.exit_code == 0, result.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["push", str(runs["full"]), "me/fine", "--to-dir", str(tmp_path / "busy")])
    assert result.exit_code == 2 and (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_a_readme_that_is_not_ours_is_not_replaced(runs, tmp_path):
    from fineinstructions.reporting.card import CARD_MARKER

    out = tmp_path / "report"
    out.mkdir()
    theirs = "# My dataset\n\nHand-written notes that took a week.\n"
    (out / "README.md").write_text(theirs)
    with pytest.raises(ReportError, match=r"README\.md exists and was not written by fineinstructions") as err:
        write_report(runs["full"], out)
    assert str(out / "README.md") in str(err.value) and "\n" not in str(err.value)
    assert (out / "README.md").read_text() == theirs and not (out / "report.html").exists()  # nothing written
    result = runner.invoke(app, ["report", str(runs["full"]), "--out", str(out)])
    assert result.exit_code == 2 and "not written by fineinstructions" in flat(result.output)
    assert (out / "README.md").read_text() == theirs
    # A README.md that merely looks like a card (front matter, other tags) is not ours either.
    (out / "README.md").write_text("---\nlicense: mit\ntags:\n- synthetic\n---\n# Other card\n")
    with pytest.raises(ReportError):
        write_report(runs["full"], out)
    # Asked to, it is replaced.
    _, card_path = write_report(runs["full"], out, overwrite=True)
    card = card_path.read_text()
    assert CARD_MARKER in card and front_matter(card)["tags"][-1] == "fineinstructions"
    # Our own earlier card is replaced as before, also one written before the marker existed.
    write_report(runs["empty"], out)
    assert "0 synthetic instruction-answer pairs" in card_path.read_text()
    card_path.write_text(card.replace(CARD_MARKER + "\n", ""))
    write_report(runs["full"], out)
    assert CARD_MARKER in card_path.read_text()
    # The staged upload folder follows the same rule.
    staged = stage_dataset(runs["full"], tmp_path / "staged")
    (staged / "README.md").write_text(theirs)
    with pytest.raises(ReportError, match="not written by fineinstructions"):
        stage_dataset(runs["full"], staged)
    assert (staged / "README.md").read_text() == theirs
    assert CARD_MARKER in (stage_dataset(runs["full"], staged, overwrite=True) / "README.md").read_text()
    assert CARD_MARKER in (stage_dataset(runs["full"], staged) / "README.md").read_text()  # ours: restaged


def test_cli_errors_are_clear(runs, tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in flat(result.output)
    # The Hub is unreachable here (HF_HUB_OFFLINE=1): the real HfApi path ends in a clear error, not a traceback.
    result = runner.invoke(app, ["push", str(runs["full"]), "me/fine"], env={"HF_TOKEN": "hf_test"})
    assert result.exit_code == 2 and "error" in result.output


class RecordingApi:
    """Stands in for HfApi: records the calls and what the upload folder held at upload time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id: str, **kwargs) -> str:
        self.calls.append(("create_repo", (repo_id,), kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs) -> None:
        self.calls.append(("upload_folder", (), kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_creates_the_dataset_repo_then_uploads_the_staged_folder(runs):
    api = RecordingApi()
    url = push_to_hub(runs["full"], "me/fine", private=True, api=api)
    assert url == "https://huggingface.co/datasets/me/fine"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    _, args, kwargs = api.calls[0]
    assert args == ("me/fine",) and kwargs == {"repo_type": "dataset", "exist_ok": True, "private": True}
    upload = api.calls[1][2]
    assert upload["repo_id"] == "me/fine" and upload["repo_type"] == "dataset"
    assert upload["delete_patterns"] == ["data/*.parquet"]  # parts of an earlier, larger push do not linger
    fingerprint = (runs["full"] / "fingerprint").read_text().strip()
    assert fingerprint in upload["commit_message"]
    parts = sorted(f"data/{p.parent.name}-{p.name}" for p in (runs["full"] / "dataset").glob("rank-*/part-*.parquet"))
    assert sorted(api.uploaded) == ["README.md", *parts]
    assert not Path(upload["folder_path"]).exists()  # the staging folder is cleaned up

    push_to_hub(runs["full"], "me/fine", api=(public := RecordingApi()))
    assert public.calls[0][2]["private"] is None  # an existing repository keeps its visibility
