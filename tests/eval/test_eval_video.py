"""Video benchmarks: reading the published files, judge requests (verbatim prompts), reply parsing and scoring."""

from __future__ import annotations

import ast
import json

import pytest

from dc.eval.benchmarks.video_judge import parse_judge_dict, reply_score, reply_verdict

from dc_testing import get_benchmark

# The published QA prompts, typed out whole (Video-ChatGPT quantitative_evaluation/evaluate_activitynet_qa.py; DC
# scripts/v1_5/eval/video/gpt_eval/eval_video_qa.py): adjacent literals there join without separators.
QA_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and "
    "determine if they match meaningfully. Here's how you can accomplish the task:------##INSTRUCTIONS: - "
    "Focus on the meaningful match between the predicted answer and the correct answer.\n- Consider "
    "synonyms or paraphrases as valid matches.\n- Evaluate the correctness of the prediction compared to "
    "the answer."
)
QA_USER_TAIL = (
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and "
    "5, with 5 indicating the highest meaningful match. Please generate the response in the form of a "
    "Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' "
    "or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR "
    "EXPLANATION. Only provide the Python dictionary string. For example, your response should look like "
    "this: {'pred': 'yes', 'score': 4.8}."
)


def replies_file(path, pairs):
    path.write_text("".join(json.dumps({"custom_id": c, "content": t}) + "\n" for c, t in pairs))
    return str(path)


# ------------------------------------------------------------------------------------------------ reply parsing
@pytest.mark.parametrize(
    "reply",
    [
        "{'pred': 'yes', 'score': 4}",
        "{'pred': 'no', 'score': 4.8}",
        ' {"pred": "yes", "score": "3",}\n',
        "{'pred' : 'y' 'es', 'score': -1e1, 'x': None, 'y': True}",
        "{'pred': 'it\\'s \"no\"'}",
        "{}",
    ],
)
def test_parse_matches_literal_eval_on_dicts(reply):
    assert parse_judge_dict(reply) == ast.literal_eval(reply.strip())


@pytest.mark.parametrize(
    "reply",
    [
        "{''score': 4.8}",  # the criterion prompts' own example: literal_eval rejects it too
        "Sure! {'pred': 'yes', 'score': 4}",
        "{'pred': 'yes', 'score': 4} because",
        "{'pred': 'yes' 'score': 4}",
        "{'pred': yes, 'score': 4}",
        "['pred', 4]",
        "{'score': 4",
        "{'score': __import__('os')}",
        "{1: 2}",
        "",
    ],
)
def test_parse_rejects_what_is_not_a_flat_dict_literal(reply):
    assert parse_judge_dict(reply) is None


def test_score_and_verdict_follow_the_published_aggregation():
    assert reply_score({"score": 4.8}) == 4 and reply_score({"score": "3"}) == 3  # int(...) as published
    assert reply_score({"score": "4.5"}) is None and reply_score({"pred": "yes"}) is None
    assert reply_verdict({"pred": "Yes."}) is True and reply_verdict({"pred": "no"}) is False
    assert reply_verdict({"pred": "not sure"}) is False  # contains "no", as the published substring test has it
    assert reply_verdict({"pred": "maybe"}) is None and reply_verdict({"score": 1}) is None


# ------------------------------------------------------------------------------------------------ zero-shot QA
def _qa_files(files, folder, videos, ext=".avi", prefix=""):
    qs = [
        ("v1", "what is the man doing?", "singing", 0),
        ("v1", "who is singing?", "man", 1),
        ("v2", "what is cut?", "onion", 0),
        ("gone", "where?", "home", 2),
        ("v3", "how many?", "two", 3),
    ]
    files.json(
        f"{folder}/test_q.json",
        [{"video_name": v, "question_id": f"q{k}", "question": q} for k, (v, q, _, _) in enumerate(qs)]
        + [{"video_name": "v1"}],
    )
    # Same order as the questions except that two are swapped: pairing is by question_id.
    ans = [{"question_id": f"q{k}", "answer": a, "type": t} for k, (_, _, a, t) in enumerate(qs)]
    ans[0], ans[1] = ans[1], ans[0]
    files.json(f"{folder}/test_a.json", ans)
    for v in ("v1", "v2"):
        files.image(f"{folder}/{videos}/{prefix}{v}{ext}")
    (files.path(f"{folder}/{videos}/{prefix}v3") / "frame_1.jpg").parent.mkdir(parents=True)  # a frame folder


def test_msvd_records(files):
    _qa_files(files, "msvd_qa", "videos")
    records, skips = get_benchmark("msvd_qa", root=files.root / "msvd_qa").load()
    assert [r.id for r in records] == ["q0", "q1", "q2", "q4"]
    r = records[0]
    assert r.prompt == "<image>\nwhat is the man doing?" and r.image is None and r.max_new_tokens == 512
    assert r.video == files.root / "msvd_qa/videos/v1.avi" and records[3].video == files.root / "msvd_qa/videos/v3"
    # the config leaves the frame count to eval.py's video.num_frames (the runner fills it in)
    assert (r.meta["answer"], records[1].meta["answer"], r.meta["num_frames"]) == ("singing", "man", None)
    assert sorted((s.id, s.reason) for s in skips) == [("q3", "missing_video"), ("row:5", "missing_field")]


def test_activitynet_and_msrvtt_folders(files):
    _qa_files(files, "activitynet_qa", "all_test", ext=".mp4", prefix="v_")
    records, _ = get_benchmark("activitynet_qa", root=files.root / "activitynet_qa").load()
    assert records[0].video == files.root / "activitynet_qa/all_test/v_v1.mp4"
    _qa_files(files, "msrvtt_qa", "videos/all", ext=".mkv")
    bench = get_benchmark("msrvtt_qa", root=files.root / "msrvtt_qa", max_new_tokens=128, num_frames=4)
    records, _ = bench.load()
    assert records[0].video == files.root / "msrvtt_qa/videos/all/v1.mkv"
    assert records[0].max_new_tokens == 128 and records[0].meta["num_frames"] == 4


def test_qa_requests_without_judge(files, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _qa_files(files, "msvd_qa", "videos")
    bench = get_benchmark("msvd_qa", root=files.root / "msvd_qa", use_judge=True)
    records, _ = bench.load()
    answers = {"q0": "He is singing.", "q1": "a woman", "q2": "an onion"}
    res = bench.score(records, answers)
    assert res["status"] == "needs_judge" and any("OPENAI_API_KEY" in n for n in res["notes"])
    preds, req_path = bench.write_submission(records, answers, tmp_path / "sub")
    assert json.loads(preds.read_text().splitlines()[0]) == {
        "id": "q0",
        "question": "what is the man doing?",
        "answer": "singing",
        "pred": "He is singing.",
    }
    reqs = [json.loads(line) for line in req_path.read_text().splitlines()]
    assert [q["custom_id"] for q in reqs] == ["q0", "q1", "q2"]
    body = reqs[0]["body"]
    assert body["model"] == "gpt-3.5-turbo-0125" and body["temperature"] == 1.0
    assert body["messages"] == [
        {"role": "system", "content": QA_SYSTEM},
        {
            "role": "user",
            "content": "Please evaluate the following video-based question-answer pair:\n\n"
            "Question: what is the man doing?\nCorrect Answer: singing\n"
            "Predicted Answer: He is singing.\n\n" + QA_USER_TAIL,
        },
    ]


def test_qa_scores_from_replies(files, tmp_path):
    _qa_files(files, "msvd_qa", "videos")
    path = replies_file(
        tmp_path / "replies.jsonl",
        [
            ("q0", "{'pred': 'yes', 'score': 4.8}"),  # yes, int(4.8) = 4
            ("q1", "{'pred': 'no', 'score': 1}"),  # no, 1
            ("q2", "{'pred': 'Yes', 'score': '5'}"),  # yes, int('5') = 5
            ("q4", "The answer is correct."),  # unparsable: not graded
        ],
    )
    bench = get_benchmark("msvd_qa", root=files.root / "msvd_qa", judge_responses=path)
    records, _ = bench.load()
    res = bench.score(records, {"q0": "singing", "q1": "woman", "q2": "onion", "q4": "two"})
    # accuracy = 2 yes / (2 yes + 1 no); score = (4 + 1 + 5) / 3.
    assert res["status"] == "ok" and res["main_metric"] == "accuracy"
    assert res["metrics"] == pytest.approx({"accuracy": 100 * 2 / 3, "score": 10 / 3})
    assert res["counts"]["skipped"] == {"judge_unparsable": 1, "missing_field": 1, "missing_video": 1}
    # per answer type: type 0 -> q0 (yes, 4) and q2 (yes, 5); type 1 -> q1 (no, 1).
    assert res["breakdown"]["type"]["0"] == pytest.approx({"accuracy": 100.0, "score": 4.5, "yes": 2, "no": 0})
    assert res["breakdown"]["type"]["1"] == pytest.approx({"accuracy": 0.0, "score": 1.0, "yes": 0, "no": 1})


# ------------------------------------------------------------------------------------------------ Video-ChatGPT
def _vcgpt(files, **options):
    files.json(
        "vcg/generic_qa.json",
        [
            {"Q": "What happens?", "A": "A dog runs.", "video_name": "a"},
            {"Q": "Describe it.", "A": "A cat sleeps.", "video_name": "a"},
            {"Q": "Who?", "A": "Nobody.", "video_name": "missing"},
        ],
    )
    files.json("vcg/temporal_qa.json", [{"Q": "What happens first?", "A": "It jumps.", "video_name": "b"}])
    files.json(
        "vcg/consistency_qa.json",
        [{"Q1": "What colour is the car?", "Q2": "Which colour does the car have?", "A": "Red.", "video_name": "b"}],
    )
    files.image("vcg/Test_Videos/a.mp4")
    files.image("vcg/Test_Videos/b.mkv")
    return get_benchmark("videochatgpt", root=files.root / "vcg", **options)


ANSWERS = {
    "generic/a_0": "A dog is running.",
    "generic/a_1": "A cat.",
    "temporal/b_0": "It jumps, then lands.",
    "consistency/b_0/q1": "The car is red.",
    "consistency/b_0/q2": "Red.",
}


def test_videochatgpt_records_and_requests(files, tmp_path):
    bench = _vcgpt(files)
    records, skips = bench.load()
    assert [r.id for r in records] == list(ANSWERS)
    assert [(s.id, s.reason) for s in skips] == [("generic/missing_0", "missing_video")]
    assert records[3].prompt == "<image>\nWhat colour is the car?" and records[4].prompt.endswith("have?")
    assert records[3].video == records[4].video == files.root / "vcg/Test_Videos/b.mkv"
    assert bench.score(records, ANSWERS)["status"] == "needs_judge"
    paths = bench.write_submission(records, ANSWERS, tmp_path / "sub")
    assert [p.name for p in paths] == [
        "videochatgpt_generic.jsonl",
        "videochatgpt_temporal.jsonl",
        "videochatgpt_consistency.jsonl",
        "videochatgpt_judge_requests.jsonl",
    ]
    assert json.loads(paths[2].read_text()) == {
        "Q1": "What colour is the car?",
        "Q2": "Which colour does the car have?",
        "A": "Red.",
        "video_name": "b",
        "pred1": "The car is red.",
        "pred2": "Red.",
    }
    reqs = {json.loads(x)["custom_id"]: json.loads(x)["body"] for x in paths[3].read_text().splitlines()}
    # 2 generic answers x (correctness, detail, context) + 1 temporal + 1 consistency pair.
    assert sorted(reqs) == sorted(
        [f"{c}:generic/a_{k}" for c in ("correctness", "detail", "context") for k in (0, 1)]
        + ["temporal:temporal/b_0", "consistency:consistency/b_0"]
    )
    user = reqs["consistency:consistency/b_0"]["messages"][1]["content"]
    assert user.startswith(
        "Please evaluate the following video-based question-answer pair:\n\n"
        "Question 1: What colour is the car?\nQuestion 2: Which colour does the car have?\n"
        "Correct Answer: Red.\nPredicted Answer to Question 1: The car is red.\n"
        "Predicted Answer to Question 2: Red.\n\nProvide your evaluation only as a consistency score"
    )
    assert user.endswith(
        "where its value is the consistency score in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER "
        "OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. For example, your "
        "response should look like this: {''score': 4.8}."
    )
    context = reqs["context:generic/a_0"]["messages"]
    assert "where its value is contextual understanding score in INTEGER" in context[1]["content"]
    assert context[0]["content"].startswith(
        "You are an intelligent chatbot designed for evaluating the contextual "
        "understanding of generative outputs for video-based question-answer pairs."
    )


def test_videochatgpt_scores(files, tmp_path):
    path = replies_file(
        tmp_path / "r.jsonl",
        [
            ("correctness:generic/a_0", "{'score': 4}"),
            ("correctness:generic/a_1", "{'score': 2.6}"),
            ("detail:generic/a_0", "{'score': 3}"),
            ("detail:generic/a_1", "{'score': 3}"),
            ("context:generic/a_0", "{'score': 5}"),
            ("context:generic/a_1", "score: 4"),
            ("temporal:temporal/b_0", "{'score': 1}"),
            ("consistency:consistency/b_0", "{'score': 5}"),
        ],
    )
    bench = _vcgpt(files, judge_responses=path)
    records, _ = bench.load()
    res = bench.score(records, ANSWERS)
    # correctness (4 + int(2.6)=2) / 2 = 3; detail 3; context 5 (one reply unparsable); temporal 1; consistency 5.
    expected = {"correctness": 3.0, "detail": 3.0, "context": 5.0, "temporal": 1.0, "consistency": 5.0}
    assert res["metrics"] == pytest.approx({**expected, "average": 17 / 5})
    assert res["main_metric"] == "average" and res["counts"]["skipped"]["judge_unparsable"] == 1


def test_videochatgpt_subsets(files):
    bench = _vcgpt(files, subsets=["temporal"])
    assert [r.id for r in bench.load()[0]] == ["temporal/b_0"]
    with pytest.raises(ValueError, match="generic"):
        _vcgpt(files, subsets=["generic", "detail"])
