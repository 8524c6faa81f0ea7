"""The terminal chat: `python -m dc.chat ckpt_path=<checkpoint or exported HF directory> image=<path>`.

Type a question and the answer streams in as it is generated; the next question continues the conversation.
Commands start with `/` (`/help` lists them): `/image <path>` and `/video <path>` start a new conversation about
a file, `/reset` forgets the turns (keeping the image or video), `/quit` (or Ctrl-D) leaves. Ctrl-C stops an answer
that is being generated.

It reads questions from standard input, so it can be scripted (`printf 'Q1\\nQ2\\n' | python -m dc.chat ...`):
each question is echoed after `you> ` (when standard input is not a terminal) and each answer follows `model> `. A bad file, an empty question or a conversation
that no longer fits the model's context prints `error: <why>` and the chat goes on.
"""

from __future__ import annotations

import sys
from typing import TextIO

from omegaconf import DictConfig

from dc.chat.inputs import ChatError
from dc.chat.session import Chat, Conversation, chat_from_config, initial_conversation

PROMPT = "you> "
ANSWER = "model> "
HELP = """commands:
  /image <path>   new conversation about an image
  /video <path>   new conversation about a video (a file, or a folder of frames)
  /reset          forget the conversation, keep the image or video
  /clear          forget the image or video too (text-only conversation)
  /info           what is loaded
  /help           this list
  /quit           leave (also /exit or Ctrl-D)"""


def banner(chat: Chat) -> str:
    """One line naming what is loaded."""
    return "dc chat | " + " | ".join(f"{k}: {v}" for k, v in chat.describe().items())


class TerminalChat:
    """The read-answer loop over text streams.

    Args:
        chat: the model and its settings.
        conversation: the conversation to start with.
        stdin: where questions come from (a terminal gets line editing through `input`).
        stdout: where prompts, answers and messages go.
    """

    def __init__(self, chat: Chat, conversation: Conversation, stdin: TextIO, stdout: TextIO) -> None:
        self.chat = chat
        self.conversation = conversation
        self.stdin = stdin
        self.stdout = stdout

    def say(self, text: str) -> None:
        """Write a line and flush (the output may be a pipe)."""
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def read(self) -> str | None:
        """The next input line, or None at the end of input."""
        if self.stdin is sys.stdin and self.stdin.isatty() and self.stdout is sys.stdout:
            try:
                return input(PROMPT)
            except EOFError:
                return None
        self.stdout.write(PROMPT)
        line = self.stdin.readline()
        if line:
            self.stdout.write(line if line.endswith("\n") else line + "\n")  # echoed: stdout reads as a transcript
        self.stdout.flush()
        return line.rstrip("\n") if line else None

    def run(self) -> int:
        """Chat until /quit or the end of input; the exit status (0)."""
        self.say(banner(self.chat))
        self.say(f"[{self.conversation.describe()}] type a question, /help for commands")
        while True:
            try:
                line = self.read()
            except KeyboardInterrupt:
                self.say("")
                continue
            if line is None:
                self.say("")
                return 0
            line = line.strip()
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            self.answer(line)

    def command(self, line: str) -> bool:
        """Carry out a `/command`; False means leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name in ("/image", "/video"):
            if not arg:
                self.say(f"error: {name} needs a path, e.g. {name} photo.{'png' if name == '/image' else 'mp4'}")
                return True
            try:
                self.conversation = self.chat.load_visual(arg, name[1:])
            except ChatError as err:
                self.say(f"error: {err}")
                return True
            self.say(f"[new conversation about the {self.conversation.describe()}]")
        elif name == "/reset":
            self.conversation = self.conversation.restarted()
            self.say(f"[new conversation; {self.conversation.describe()}]")
        elif name == "/clear":
            self.conversation = Conversation()
            self.say("[new text-only conversation]")
        elif name == "/info":
            for key, value in self.chat.describe().items():
                self.say(f"  {key}: {value}")
            turns = len(self.conversation.turns) // 2
            self.say(f"  input: {self.conversation.describe()}, {turns} turn{'' if turns == 1 else 's'} so far")
            self.say(f"  generation: {self.chat.settings}")
        elif name == "/help":
            self.say(HELP)
        else:
            self.say(f"error: unknown command {name}; /help lists the commands")
        return True

    def answer(self, question: str) -> None:
        """Stream the answer to `question` after `model> `; errors are printed, never raised."""
        shown: str | None = None
        try:
            for step in self.chat.stream(self.conversation, question):
                if shown is None:
                    self.stdout.write(ANSWER)
                    shown = ""
                if step.text.startswith(shown):
                    self.stdout.write(step.text[len(shown) :])
                    shown = step.text
                self.stdout.flush()
            if not shown:  # the model ended at once: say so rather than leave `model> ` bare
                self.stdout.write(("" if shown is not None else ANSWER) + "[empty answer: the model ended it at once]")
            self.say("")
        except ChatError as err:
            self.say(("\n" if shown is not None else "") + f"error: {err}")
        except KeyboardInterrupt:
            self.say("\n[stopped; this turn is not kept]")
        except Exception as err:  # a failed generation (e.g. out of GPU memory) must not end the chat
            self.say(("\n" if shown is not None else "") + f"error: generation failed: {type(err).__name__}: {err}")


def run(cfg: DictConfig, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """`python -m dc.chat ...`: load the model, start with `image=`/`video=` if given, chat; the exit status."""
    chat = chat_from_config(cfg)
    conversation = initial_conversation(chat, cfg)
    return TerminalChat(chat, conversation, stdin or sys.stdin, stdout or sys.stdout).run()
