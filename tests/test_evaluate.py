"""`paradecom eval`: the lexical similarity, coverage and dependency agreement on hand-made trees,
the one-line errors, and one run end to end on fake-llm."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DEVAI
from helpers import run_cli

from paradecom.devtools.evaluate import (
    Requirement,
    content_words,
    dead_roots,
    parse_requirements,
    score_tree,
    similarity,
    stem,
    waits_on,
)
from paradecom.errors import ProjectFileError
from paradecom.tree import TaskTree, TreeTask

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]

# DevAI instance 01's requirements, as in the benchmark file.
FASHION = [
    Requirement(0, (), 'The "Fashion-MNIST" dataset is loaded in `src/data_loader.py`.'),
    Requirement(
        1,
        (0,),
        "Data augmentation is performed using `torchvision.transforms`, including rotation, scaling, etc. "
        "The implementation is in `src/data_loader.py`.",
    ),
    Requirement(2, (), 'The "ResNet-18" model is imported from "PyTorch" in `src/model.py`.'),
    Requirement(
        3,
        (0, 1, 2),
        'Training progress is displayed using the "tqdm" library in the main training loop in `src/train.py`.',
    ),
    Requirement(
        4, (0, 1, 2, 3), "The trained model is saved under the file name `fashionnet.pt` in `models/saved_models/`."
    ),
]


def task(
    id: str,
    title: str,
    *children: TreeTask,
    description: str = "",
    criteria: tuple[str, ...] = (),
    depends_on: tuple[str, ...] = (),
) -> TreeTask:
    """A done task with hierarchical id `id`; its depth and its children's parent ids follow from it."""
    parent = id.rpartition(".")[0] or None
    return TreeTask(
        id=id,
        parent_id=parent,
        depth=id.count("."),
        title=title,
        description=description,
        acceptance_criteria=list(criteria),
        depends_on=list(depends_on),
        status="done",
        children=list(children),
    )


def tree(*tasks: TreeTask) -> TaskTree:
    """A finished tree of the given top-level tasks."""
    return TaskTree(project={"name": "test", "state": "done"}, tasks=list(tasks))


def good_fashion_tree() -> TaskTree:
    """A decomposition of instance 01 that a careful person would write: paraphrases, not copies."""
    return tree(
        task(
            "1",
            "Fashion-MNIST classifier",
            task(
                "1.1",
                "Build the data pipeline",
                task("1.1.1", "Load Fashion-MNIST", description="Write the dataset loader in src/data_loader.py."),
                task(
                    "1.1.2",
                    "Augment the training images",
                    description="Random rotation and scaling with torchvision transforms, in src/data_loader.py.",
                    depends_on=("1.1.1",),
                ),
            ),
            task("1.2", "Import ResNet-18 from PyTorch", description="Model definition in src/model.py."),
            task(
                "1.3",
                "Train the model",
                task(
                    "1.3.1",
                    "Write the training loop",
                    description="src/train.py shows training progress with a tqdm bar.",
                    criteria=("The main loop displays progress with the tqdm library.",),
                ),
                task(
                    "1.3.2",
                    "Save the trained model",
                    description="Write fashionnet.pt to models/saved_models/ once training ends.",
                    depends_on=("1.3.1",),
                ),
                depends_on=("1.1", "1.2"),
            ),
        )
    )


def test_content_words_lowercase_split_stop_words_and_stem() -> None:
    """Paths, quotes and hyphens split into words; stop words go; inflections meet in one stem."""
    assert content_words('The "Fashion-MNIST" dataset is loaded in `src/data_loader.py`.') == {
        "fashion",
        "mnist",
        "dataset",
        "load",
        "src",
        "data",
        "loader",
        "py",
    }
    assert content_words("ResNet18") == content_words("ResNet-18") == content_words("resnet_18") == {"resnet", "18"}
    assert content_words("It is implemented using a, b and c, etc.") == frozenset()


@pytest.mark.parametrize(
    ("words", "stemmed"),
    [
        (("load", "loads", "loaded", "loading"), "load"),
        (("save", "saved", "saving", "saves"), "sav"),
        (("library", "libraries"), "library"),
        (("run", "running", "runs"), "run"),
        (("install", "installed", "installing"), "install"),
        (("class", "classes"), "class"),
        (("status",), "status"),
        (("analysis",), "analysis"),
    ],
)
def test_stem_joins_inflections(words: tuple[str, ...], stemmed: str) -> None:
    """Each word of a family gets the same stem, and words ending in ss/us/is keep their s."""
    assert {stem(w) for w in words} == {stemmed}


def test_similarity_is_the_recall_of_the_criterion_words() -> None:
    """Half the criterion's words in the leaf is 0.5, whatever else the leaf says; empty is 0."""
    criterion = content_words("tqdm progress bar training")
    assert similarity(criterion, content_words("Show a tqdm bar and many other unrelated words")) == 0.5
    assert similarity(criterion, criterion) == 1.0
    assert similarity(frozenset(), criterion) == 0.0


def test_a_tree_that_covers_every_criterion_scores_100_percent() -> None:
    """Every requirement of instance 01 finds its leaf, and the tree orders every prerequisite."""
    score = score_tree(good_fashion_tree(), FASHION)
    assert score.coverage == 1.0
    assert (score.covered, score.criteria, score.tasks, score.leaves) == (5, 5, 8, 5)
    assert [m.best_leaf for m in score.matches] == ["1.1.1", "1.1.2", "1.2", "1.3.1", "1.3.2"]
    assert score.edges == 8 and score.edges_same_leaf == 0
    assert score.dependency_agreement == 1.0


def test_a_tree_that_covers_no_criterion_scores_0_percent() -> None:
    """Leaves sharing no content word with any criterion cover nothing and order nothing."""
    unrelated = tree(
        task(
            "1",
            "Bakery webshop",
            task("1.1", "Design the checkout", description="Cart, invoices, card payments."),
            task("1.2", "Write the privacy policy", depends_on=("1.1",)),
        )
    )
    score = score_tree(unrelated, FASHION)
    assert score.coverage == 0.0 and score.covered == 0
    assert all(m.best_leaf is None and m.similarity == 0.0 for m in score.matches)
    # Edges whose ends match no leaf cannot be judged: no agreement, rather than a made-up 0 or 100%.
    assert (score.edges, score.edges_unmatched, score.edges_judged, score.dependency_agreement) == (8, 8, 0, None)


def test_an_undivided_root_is_not_scored() -> None:
    """A root left as one task restates the request; it has decomposed nothing, so it covers nothing."""
    root_only = tree(task("1", "Fashion", description=" ".join(r.criteria for r in FASHION)))
    score = score_tree(root_only, FASHION)
    assert (score.leaves, score.coverage, score.dependency_agreement, score.chance_agreement) == (0, 0.0, None, None)


def test_coverage_threshold_is_inclusive() -> None:
    """A criterion is covered when exactly the threshold share of its words is in one leaf."""
    reqs = [Requirement(0, (), "alpha beta gamma delta")]
    half = tree(task("1", "root", task("1.1", "alpha beta"), task("1.2", "gamma")))
    assert score_tree(half, reqs, threshold=0.5).coverage == 1.0
    assert score_tree(half, reqs, threshold=0.51).coverage == 0.0
    # Words split across two leaves do not add up: coverage is by one leaf.
    split = tree(task("1", "root", task("1.1", "alpha"), task("1.2", "gamma")))
    assert score_tree(split, reqs, threshold=0.5).coverage == 0.0


def dependency_tree() -> TaskTree:
    """1.1 = {1.1.1 <- 1.1.2}; 1.2 needs 1.1; 1.3 = {1.3.1, 1.3.2} needs 1.2; 1.4 needs nothing."""
    return tree(
        task(
            "1",
            "root",
            task("1.1", "group one", task("1.1.1", "alpha"), task("1.1.2", "beta", depends_on=("1.1.1",))),
            task("1.2", "gamma", depends_on=("1.1",)),
            task("1.3", "group three", task("1.3.1", "delta"), task("1.3.2", "epsilon"), depends_on=("1.2",)),
            task("1.4", "zeta"),
        )
    )


def test_waits_on_follows_siblings_ancestors_and_transitivity() -> None:
    """A leaf waits on every leaf of what it or an ancestor depends on, and on what those wait on."""
    waits = waits_on(dependency_tree())
    assert waits["1.1.1"] == set()
    assert waits["1.1.2"] == {"1.1.1"}
    assert waits["1.2"] == {"1.1.1", "1.1.2"}  # a dependency on 1.1 is one on each of its leaves
    # Through the parent 1.3 -> 1.2, then transitively 1.2 -> 1.1's leaves.
    assert waits["1.3.1"] == waits["1.3.2"] == {"1.2", "1.1.1", "1.1.2"}
    assert waits["1.4"] == set()
    assert "1.3" not in waits  # only leaves


def test_dependency_agreement_on_a_small_graph() -> None:
    """Direct, transitive and reversed edges are judged; a same-leaf edge is counted apart."""
    reqs = [
        Requirement(0, (), "alpha"),  # -> 1.1.1
        Requirement(1, (0,), "beta"),  # -> 1.1.2: waits on 1.1.1 directly, respected
        Requirement(2, (0,), "delta"),  # -> 1.3.1: waits on 1.1.1 through 1.3 -> 1.2 -> 1.1, respected
        Requirement(3, (2,), "gamma"),  # -> 1.2: 1.2 comes before 1.3.1, so reversed, not respected
        Requirement(4, (2,), "delta again"),  # -> 1.3.1 too: same leaf, not judged
        Requirement(5, (0,), "zeta"),  # -> 1.4: unordered with 1.1.1, not respected
        Requirement(6, (5,), "omega"),  # matches no leaf: not judged
    ]
    score = score_tree(dependency_tree(), reqs)
    assert [m.best_leaf for m in score.matches] == ["1.1.1", "1.1.2", "1.3.1", "1.2", "1.3.1", "1.4", None]
    assert (score.edges, score.edges_same_leaf, score.edges_unmatched) == (6, 1, 1)
    assert (score.edges_judged, score.edges_respected) == (4, 2)
    assert score.dependency_agreement == pytest.approx(2 / 4)
    # Every matched requirement here is covered ("again" is a stop word), so both agreements agree.
    assert (score.edges_judged_covered, score.edges_respected_covered) == (4, 2)
    # Ordered pairs among the 6 leaves: 1.1.2>1.1.1, 1.2>2 leaves, 1.3.1 and 1.3.2 > 3 leaves each.
    assert score.chance_agreement == pytest.approx((1 + 2 + 3 + 3) / (6 * 5))


def test_no_prerequisites_gives_no_agreement() -> None:
    """Without prerequisite edges there is nothing to agree with: None, not 0 or 100%."""
    score = score_tree(dependency_tree(), [Requirement(0, (), "alpha")])
    assert score.edges == 0 and score.dependency_agreement is None


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([], "expected a JSON object"),
        ({"name": "x", "description": "y"}, "expected a string 'query'"),
        ({"name": "x", "query": "y"}, "non-empty list 'requirements'"),
        ({"name": "x", "query": "y", "requirements": [{"criteria": "c"}]}, "'requirement_id'"),
        ({"name": "x", "query": "y", "requirements": [{"requirement_id": 0, "prerequisites": [1], "criteria": "c"}]},
         "unknown prerequisite 1"),
    ],
)  # fmt: skip
def test_parse_requirements_rejects_what_is_not_devai(data: object, needle: str) -> None:
    """A file without DevAI's shape is one ProjectFileError line that names it and the problem."""
    with pytest.raises(ProjectFileError, match=r"f\.json: not a DevAI instance") as info:
        parse_requirements(data, "f.json")
    assert needle in str(info.value) and "\n" not in str(info.value)


def assert_one_line_error(args: list[str], needle: str) -> None:
    """`paradecom eval ARGS` fails with exit 2 and one stderr line containing `needle`."""
    result = run_cli([*PARADECOM, "eval", *args], env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    stderr = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, stderr)
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("paradecom eval: error:") and needle in stderr, stderr


@pytest.mark.slow
def test_bad_directories_and_files_are_one_line_errors(tmp_path: Path) -> None:
    """A missing DIR, a DIR without JSON files, a project file that is not DevAI and bad JSON: exit 2."""
    assert_one_line_error([str(tmp_path / "missing")], "no such directory")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error([str(tmp_path)], "no .json files")
    (tmp_path / "a.json").write_text(json.dumps({"name": "shop", "description": "Sell things."}))
    assert_one_line_error([str(tmp_path)], "a.json: not a DevAI instance")
    (tmp_path / "a.json").write_text("{ not json")
    assert_one_line_error([str(tmp_path)], "a.json: invalid JSON at line 1")
    assert_one_line_error([str(tmp_path), "--max-depth", "0"], "--max-depth")
    assert_one_line_error([str(tmp_path), "--format", "xml"], "--format")


def devai_files(dest: Path) -> list[Path]:
    """Two DevAI instances in `dest`: the benchmark's first two when present, else two hand-written ones."""
    sources = sorted(DEVAI.glob("*.json"))[:2] if DEVAI.is_dir() else []
    if len(sources) == 2:
        return [Path(shutil.copy(src, dest)) for src in sources]
    made = []
    for i, topic in enumerate(("image classifier", "maze solver"), 1):
        data = {
            "name": f"0{i}_{topic.replace(' ', '_')}",
            "query": f"Please build a {topic} in Python with a command line interface and tests.",
            "requirements": [
                {"requirement_id": 0, "prerequisites": [], "criteria": f"The {topic} is in `src/main.py`."},
                {"requirement_id": 1, "prerequisites": [0], "criteria": "Tests run with pytest in `tests/`."},
            ],
        }
        path = dest / f"0{i}_instance.json"
        path.write_text(json.dumps(data))
        made.append(path)
    return made


@pytest.mark.slow
def test_eval_end_to_end_on_fake_llm(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """`paradecom eval --format json` decomposes two DevAI files on fake-llm and scores both in [0, 1]."""
    base_url = fake_llm("--fanout", "3")
    data_dir = tmp_path / "devai"
    data_dir.mkdir()
    files = devai_files(data_dir)
    (data_dir / "README.md").write_text("not an instance, and not read")
    trees = tmp_path / "trees"
    args = [*PARADECOM, "eval", str(data_dir), "--limit", "2", "--format", "json"]
    result = run_cli(
        [*args, "--runners", "1", "--max-depth", "1", "--save-trees", str(trees)],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"},
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = [json.loads(f.read_text())["name"] for f in files]
    assert [item["name"] for item in report["instances"]] == names
    assert report["settings"]["max_depth"] == 1
    for item in report["instances"]:
        assert item["error"] is None
        assert item["tasks"] == 4 and item["leaves"] == 3  # the root and fake-llm's 3 children
        assert (item["llm_calls"], item["llm_reasks"], item["llm_failures"]) == (1, 0, 0)
        for key in ("coverage", "mean_best_similarity", "dependency_agreement", "chance_agreement"):
            assert item[key] is None or 0.0 <= item[key] <= 1.0, (key, item[key])
        assert 0.0 <= item["coverage"] <= 1.0
    assert report["mean"]["scored"] == 2 and 0.0 <= report["mean"]["coverage"] <= 1.0
    assert "2/2" in result.stderr  # one progress line per instance
    # The saved trees score the same again, with no LLM at all.
    again = run_cli([*args, "--from-trees", str(trees)], env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert again.returncode == 0, again.stderr
    rescored = json.loads(again.stdout)["instances"]
    for first, second in zip(report["instances"], rescored, strict=True):
        assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}


def test_self_and_repeated_prerequisites_are_dropped() -> None:
    """A requirement that lists itself (as DevAI instance 45 does) or a prerequisite twice gets one edge."""
    data = {
        "name": "x",
        "query": "y",
        "requirements": [
            {"requirement_id": 0, "prerequisites": [], "criteria": "a"},
            {"requirement_id": 1, "prerequisites": [0, 1, 0], "criteria": "b"},
        ],
    }
    assert parse_requirements(data, "f.json") == [Requirement(0, (), "a"), Requirement(1, (0,), "b")]


def test_ties_go_to_the_more_focused_leaf_then_the_first() -> None:
    """Equal recall is broken by the Jaccard index (fewer extra words wins), then by tree order."""
    reqs = [Requirement(0, (), "alpha"), Requirement(1, (), "beta")]
    t = tree(task("1", "root", task("1.1", "alpha beta gamma delta"), task("1.2", "alpha"), task("1.3", "beta")))
    assert [m.best_leaf for m in score_tree(t, reqs).matches] == ["1.2", "1.3"]
    t = tree(task("1", "root", task("1.1", "alpha gamma"), task("1.2", "alpha delta")))
    assert score_tree(t, reqs[:1]).matches[0].best_leaf == "1.1"


def test_covered_dependency_agreement_judges_only_covered_ends() -> None:
    """An edge between two weakly matched requirements counts in one agreement but not the other."""
    reqs = [
        Requirement(0, (), "alpha"),  # -> 1.1.1, covered
        Requirement(1, (0,), "beta"),  # -> 1.1.2, covered: respected
        Requirement(2, (), "delta kappa lambda"),  # -> 1.3.1 at 1/3: not covered
        Requirement(3, (2,), "gamma"),  # -> 1.2, reversed: judged, not respected; not judged when covered only
    ]
    score = score_tree(dependency_tree(), reqs)
    assert [m.covered for m in score.matches] == [True, True, False, True]
    assert (score.edges_judged, score.edges_respected, score.dependency_agreement) == (2, 1, 0.5)
    assert (score.edges_judged_covered, score.edges_respected_covered, score.covered_dependency_agreement) == (
        1,
        1,
        1.0,
    )


def test_a_tree_whose_roots_are_all_dead_is_a_failure_not_a_zero() -> None:
    """Every top-level task dead (an unreachable endpoint, say) names the error; one live root is scored."""
    dead = task("1", "root")
    dead.status, dead.last_error = "dead", "LLM request failed 5 times,\nlast: Connection error."
    assert (
        dead_roots(tree(dead))
        == "every top-level task is dead; last error: LLM request failed 5 times, last: Connection error."
    )
    assert dead_roots(tree(dead, task("2", "seed", task("2.1", "alpha")))) is None
    assert dead_roots(good_fashion_tree()) is None


def test_from_trees_without_a_saved_tree_is_a_one_line_error(tmp_path: Path) -> None:
    """--from-trees names the saved tree it cannot find, exit 2, before scoring anything."""
    data_dir = tmp_path / "devai"
    data_dir.mkdir()
    devai_files(data_dir)
    (tmp_path / "trees").mkdir()
    assert_one_line_error([str(data_dir), "--from-trees", str(tmp_path / "trees")], "no saved tree for")


@pytest.mark.slow
def test_eval_prints_hostile_instance_names_escaped(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """An instance named with a terminal escape and a bidi override: the table and the progress lines
    show them escaped (`\\x1b`, `\\u202e`), never as the characters themselves."""
    base_url = fake_llm("--fanout", "3")
    data_dir = tmp_path / "devai"
    data_dir.mkdir()
    path = devai_files(data_dir)[0]
    data = json.loads(path.read_text())
    data["name"] = "evil\x1b[2J\u202ename"
    path.write_text(json.dumps(data))
    result = run_cli(
        [*PARADECOM, "eval", str(data_dir), "--limit", "1", "--runners", "1", "--max-depth", "1"],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"},
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    for text in (result.stdout, result.stderr):
        assert "\x1b" not in text and "\u202e" not in text
    assert "evil\\x1b[2J\\u202ename" in result.stdout and "evil\\x1b[2J\\u202ename" in result.stderr
