"""Stage-2 data choices: which turns of a story or dialogue become targets, and what each example holds.

A story (VIST, ``steps``) or dialogue (MMDialog, ``turns``) sample becomes
:class:`TaskExample` s: a system prompt, context messages (a role, then parts: text
followed by input images) and a target (a role, its text, the images to generate).
Everything here is a data choice, set by :class:`TurnChoices`; turning an example
into tokens (``###Human:`` markers, ``<Img><ImageHere></Img>``, chat roles, or none)
is the prompt template's job. The defaults are this project's reading; ``OFFICIAL``
is the authors' ``dataloader.py`` (eric-ai-lab/MiniGPT-5, commit 915ab17):

Stories (``story_tasks``, ``prompts``), official ``dataloader.py:251-304``; for step t
(the earlier steps, their captions and images, are the story so far):

- ``generate`` (t >= 0): story so far + "Generate an image with the scene description:
  <caption t>" -> the image of step t alone (``:266-278``);
- ``continue`` (t >= 1): story so far + "Tell me the next scene with image." -> caption t
  and its image (``:280-290``); without prompts, this project's one task (the default);
- ``understand`` (t >= 1): story so far + "Tell me the next scene description by this
  image:" and image t as input -> caption t (``:292-301``).

Each official instruction is drawn from two or three wordings (:mod:`minigpt5.task_prompts`)
once per example (``random.choice`` when the data set is built); here the draw is fixed
by the sample key, step and task, so it is the same in every epoch, worker and run.

Dialogues (``turn_content``, ``bad_turns``, ``max_turn_tokens``, ``history``, ``roles``, ``speakers``),
official ``dataloader.py:344-402``: every turn after the first is a target
(``:371-386``; of either speaker); a turn is read as its first text and first image
(``:355``, ``:363-366``); the dialogue stops at the first turn whose text is empty or
ends in ``.jpg`` (``:356-357``), is over 50 tokens (``:358-361``, training only) or whose
image is missing or broken (``:367-369``); even turns are ``###Human:``, odd turns
``###Assistant:`` (``:373-376``, ``:388-394``), and the history keeps the last exchange:
2 turns before a user's turn, 3 (user, assistant, user) before an assistant's
(``:388-399``). This project's reading (the defaults) joins all texts and images of a
turn, skips a bad turn alone, keeps the whole history without roles and makes only the
assistant's turns targets: without a speaker's marker, a user's turn as a target teaches
the model to end where the user stops, the very place a response must begin.

Every turn left out is counted and logged (:class:`data_modules.shards.SampleCounter`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generic, Literal, Optional, TypeVar, Union

from data_modules.errors import BadSample
from data_modules.shards import SampleCounter
from minigpt5.task_prompts import MMDIALOG_SYSTEM, VIST_CONTINUE, VIST_GENERATE, VIST_SYSTEM, VIST_UNDERSTAND

I = TypeVar("I")  # an image: a member name in the shard, or a decoded image
J = TypeVar("J")

StoryTask = Literal["generate", "continue", "understand"]
STORY_TASKS = ("generate", "continue", "understand")
FIRST_STEP = {"generate": 0, "continue": 1, "understand": 1}  # a continuation needs a story before it
Context = Literal["both", "text", "images"]
USER, ASSISTANT = "user", "assistant"


@dataclass
class TurnChoices:
    """How stage-2 samples become examples; the defaults are this project's reading, ``OFFICIAL`` the authors'."""

    story_tasks: list[StoryTask] = field(default_factory=lambda: ["continue"])  # tasks made from each story step
    prompts: Literal["none", "official"] = "none"  # the official system prompt and task instructions, or none
    # user / assistant roles: dialogue turns alternate from the user; a story's target is the assistant's
    roles: bool = False
    turn_content: Literal["all", "first"] = "all"  # a dialogue turn: all its texts (joined) and images, or the first
    bad_turns: Literal["skip", "stop"] = "skip"  # an unusable dialogue turn: left out alone, or the dialogue ends there
    max_turn_tokens: Optional[int] = None  # a dialogue turn with more text tokens is unusable (None: no limit)
    history: Literal["all", "exchange"] = "all"  # a dialogue target's context: every earlier turn, or the last exchange
    # whose dialogue turns are targets: either speaker's (official) or the assistant's (odd turns) alone
    speakers: Literal["both", "assistant"] = "assistant"
    # the share of training examples whose context turns keep their text but lose their images
    # (modality dropout; 0 off, the official loader has none). The draw is fixed by the sample,
    # turn and task. Validation and evaluation examples always keep their images.
    image_context_dropout: float = 0.0

    def __post_init__(self) -> None:
        def check(name: str, value: Any, allowed: tuple) -> None:
            if value not in allowed:
                raise ValueError(f"data.choices.{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")

        tasks = list(self.story_tasks)
        if not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(STORY_TASKS):
            raise ValueError(f"data.choices.story_tasks must be distinct tasks of {', '.join(STORY_TASKS)}; "
                             f"got {tasks}")
        check("prompts", self.prompts, ("none", "official"))
        if not isinstance(self.roles, bool):
            raise ValueError(f"data.choices.roles must be true or false; got {self.roles!r}")
        check("turn_content", self.turn_content, ("all", "first"))
        check("bad_turns", self.bad_turns, ("skip", "stop"))
        check("history", self.history, ("all", "exchange"))
        check("speakers", self.speakers, ("both", "assistant"))
        dropout = self.image_context_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"data.choices.image_context_dropout must be a share in [0, 1); got {dropout!r}")
        if self.max_turn_tokens is not None and (isinstance(self.max_turn_tokens, bool) or self.max_turn_tokens < 1):
            raise ValueError(f"data.choices.max_turn_tokens must be >= 1 or null; got {self.max_turn_tokens!r}")


OFFICIAL = TurnChoices(
    story_tasks=["generate", "continue", "understand"], prompts="official", roles=True,
    turn_content="first", bad_turns="stop", max_turn_tokens=50, history="exchange", speakers="both",
)


@dataclass
class SourceTurn(Generic[I]):
    """One usable step or turn: its text and images, and ``index``, its position in the sample."""

    text: str
    images: list[I]
    index: int


@dataclass
class Part(Generic[I]):
    """Text, then input images."""

    text: str
    images: list[I] = field(default_factory=list)


@dataclass
class Message(Generic[I]):
    """What one speaker says (``role`` None when the examples carry no roles)."""

    role: Optional[str]
    parts: list[Part[I]]


@dataclass
class TaskExample(Generic[I]):
    """One training example: ``context`` in, the target (``role``, ``text``, ``images`` to generate) out."""

    task: str  # generate, continue, understand (stories), respond (dialogues)
    turn: int  # the target's position in the sample's usable turns
    system: str  # the data set's system prompt ("" for none)
    context: list[Message[I]]
    role: Optional[str]
    text: str
    images: list[I]
    # a story task's request after the story so far, in the user's message: the instruction
    # (or, without prompts, the step's own text or image) and the images it shows
    request: Optional[Part[I]] = None

    def map_images(self, fn: Callable[[I], J]) -> TaskExample[J]:
        """The same example with every image ``fn(image)`` (e.g. member names -> decoded images)."""
        def part(p: Part[I]) -> Part[J]:
            return Part(p.text, [fn(i) for i in p.images])

        context = [Message(m.role, [part(p) for p in m.parts]) for m in self.context]
        request = part(self.request) if self.request is not None else None
        return replace(self, context=context, images=[fn(i) for i in self.images], request=request)  # type: ignore[arg-type]

    def image_names(self) -> list[I]:
        """Every image the example reads: input images in order (the request's last), then targets."""
        request = self.request.images if self.request is not None else []
        return [i for m in self.context for p in m.parts for i in p.images] + list(request) + list(self.images)


# ---- usable turns ----

def story_turns(steps: list[dict[str, Any]]) -> list[SourceTurn[str]]:
    """VIST steps (one caption and one image each, checked at conversion) as turns."""
    return [SourceTurn(step.get("text", ""), [step["image"]], i) for i, step in enumerate(steps)]


def _read_turn(turn: dict[str, Any], choices: TurnChoices, count_tokens: Callable[[str], int],
              where: str) -> Union[tuple[str, list[str]], str]:
    """(text, images) of a dialogue turn under ``choices``, or why it is unusable."""
    if choices.turn_content == "first":
        if "texts" not in turn or "media" not in turn:
            raise ValueError(
                f"{where}: turns have no 'texts'/'media' (shards written before turn_content=first existed, or not "
                "by `minigpt5 data mmdialog`): convert the dialogues again, or set data.choices.turn_content=all"
            )
        text = turn["texts"][0] if turn["texts"] else ""
        if not text:
            return "its first text is empty"
        if text.endswith(".jpg"):
            return "its text ends in .jpg"
        if turn["media"][:1] == [None]:
            return "its first image was missing or corrupt at conversion"
        images = turn["media"][:1]
    else:
        text, images = turn.get("text", ""), list(turn.get("images", []))
        if choices.bad_turns == "stop" and None in turn.get("media", []):
            return "an image was missing or corrupt at conversion"
    tokens = count_tokens(text) if choices.max_turn_tokens is not None else 0
    if choices.max_turn_tokens is not None and tokens > choices.max_turn_tokens:
        return f"{tokens} text tokens, over data.choices.max_turn_tokens={choices.max_turn_tokens}"
    return text, images


def dialogue_turns(
    sample: dict[str, Any], turns: list[dict[str, Any]], choices: TurnChoices, count_tokens: Callable[[str], int],
    counter: SampleCounter,
) -> list[SourceTurn[str]]:
    """The usable turns of a dialogue under ``choices``; the others are counted and logged."""
    where = f"{sample.get('__url__')} sample '{sample.get('__key__')}'"
    kept: list[SourceTurn[str]] = []
    expected = 0  # the index the next turn has when the converter dropped none before it
    for position, turn in enumerate(turns):
        index = turn.get("index", position)
        if choices.bad_turns == "stop" and index > expected:
            counter.note_stopped(sample, expected, "dropped at conversion (no text and no usable image)",
                                 len(turns) - position)
            break
        expected = index + 1
        picked = _read_turn(turn, choices, count_tokens, where)
        if isinstance(picked, str):
            if choices.bad_turns == "stop":
                counter.note_stopped(sample, index, picked, len(turns) - position)
                break
            counter.note_turn_skipped(sample, index, picked)
            continue
        kept.append(SourceTurn(picked[0], picked[1], index))
    return kept


# ---- examples ----

def _draw(options: tuple[str, ...], key: str, step: int, task: str) -> str:
    """One of the official wordings, fixed by the sample, step and task."""
    return options[zlib.crc32(f"{key}/{step}/{task}".encode()) % len(options)]


def _share(key: str, turn: int, task: str, what: str) -> float:
    """A number in [0, 1) fixed by the sample, turn, task and what it decides."""
    return zlib.crc32(f"{key}/{turn}/{task}/{what}".encode()) / 2**32


def without_context_images(example: TaskExample[I]) -> TaskExample[I]:
    """``example`` with its context turns' images left out (their text stays; a task's own request keeps its image)."""
    context = [Message(m.role, [Part(p.text) for p in m.parts]) for m in example.context]
    return replace(example, context=context)


def history_part(turn: SourceTurn[I], context: Context) -> Part[I]:
    return Part(turn.text if context != "images" else "", list(turn.images) if context != "text" else [])


def story_example(task: str, turns: list[SourceTurn[I]], t: int, key: str, choices: TurnChoices,
                  context: Context) -> TaskExample[I]:
    """Task ``task`` of step ``t`` of a story (see the module docstring)."""
    official, step = choices.prompts == "official", turns[t]
    parts = [history_part(turn, context) for turn in turns[:t]]
    request: Optional[Part[I]]
    if task == "generate":
        request = Part(_draw(VIST_GENERATE, key, t, task).format(text=step.text) if official else step.text)
        text, images = "", list(step.images)
    elif task == "continue":
        request = Part(_draw(VIST_CONTINUE, key, t, task)) if official else None
        text, images = step.text, list(step.images)
    else:  # understand
        request = Part(_draw(VIST_UNDERSTAND, key, t, task) if official else "", list(step.images))
        text, images = step.text, []
    user, assistant = (USER, ASSISTANT) if choices.roles else (None, None)
    return TaskExample(task, t, VIST_SYSTEM if official else "", [Message(user, parts)], assistant, text, images,
                       request)


def story_examples(turns: list[SourceTurn[I]], key: str, choices: TurnChoices, targets: str,
                   context: Context) -> list[TaskExample[I]]:
    """Every task of every target step (``targets``: all steps, or the last), step by step."""
    steps = range(len(turns)) if targets == "all" else range(len(turns) - 1, len(turns))
    return [story_example(task, turns, t, key, choices, context)
            for t in steps for task in choices.story_tasks if t >= FIRST_STEP[task]]


def speaker_at(index: int) -> str:
    """Who says a dialogue's turn ``index``: speakers alternate by position, the user first."""
    return USER if index % 2 == 0 else ASSISTANT


def _speaker(turn: SourceTurn[Any]) -> str:
    return speaker_at(turn.index)


def _role(turn: SourceTurn[Any], choices: TurnChoices) -> Optional[str]:
    return _speaker(turn) if choices.roles else None


def dialogue_examples(turns: list[SourceTurn[I]], choices: TurnChoices, targets: str,
                      context: Context) -> list[TaskExample[I]]:
    """A response example per target turn: every turn after the first of ``choices.speakers``, or the last of them."""
    candidates = [t for t in range(1, len(turns)) if choices.speakers == "both" or _speaker(turns[t]) == ASSISTANT]
    examples = []
    for t in candidates if targets == "all" else candidates[-1:]:
        start = 0 if choices.history == "all" else max(0, t - 2 - t % 2)  # the last exchange before turn t
        history = [Message(_role(turn, choices), [history_part(turn, context)]) for turn in turns[start:t]]
        examples.append(TaskExample("respond", t, MMDIALOG_SYSTEM if choices.prompts == "official" else "", history,
                                    _role(turns[t], choices), turns[t].text, list(turns[t].images)))
    return examples


def sample_examples(
    sample: dict[str, Any], record: dict[str, Any], choices: TurnChoices, targets: str, context: Context,
    count_tokens: Callable[[str], int], counter: SampleCounter, training: bool = False,
) -> list[TaskExample[str]]:
    """The examples of one story or dialogue sample (its ``.json`` read as ``record``); BadSample if none.

    ``training``: ``choices.image_context_dropout`` applies (training examples only)."""
    if "steps" in record:
        turns = story_turns(record["steps"])
        examples = story_examples(turns, sample["__key__"], choices, targets, context)
    elif "turns" in record:
        turns = dialogue_turns(sample, record["turns"], choices, count_tokens, counter)
        examples = dialogue_examples(turns, choices, targets, context)
    else:
        raise BadSample(sample, "json has neither 'steps' (VIST) nor 'turns' (MMDialog)")
    if not examples:
        raise BadSample(sample, f"no examples from its {len(turns)} usable turn(s)")
    dropout = choices.image_context_dropout if training else 0.0
    if dropout:
        key = sample["__key__"]
        examples = [without_context_images(e) if _share(key, e.turn, e.task, "images") < dropout else e
                    for e in examples]
    return examples
