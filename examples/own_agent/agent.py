"""An agent of its own, trained by codrl without a line of codrl in it.

It answers the questions of one pack (made-up units: "How many grams do 6 zorbs weigh?") in order,
keeps a notes file between them and has the model rewrite its notes after each answer. It grades
itself against the task's answer and reports each reward, with feedback, to the training proxy.
Only the official ``openai`` client and the standard library are used.

codrl starts it once per lifecycle with OPENAI_BASE_URL, OPENAI_API_KEY, CODRL_LIFECYCLE,
CODRL_TASKS (a JSON file: {"tasks": [...], ...}) and CODRL_SEED in its environment. It runs
against any OpenAI-compatible server as well (without the reward calls, set CODRL_LIFECYCLE="").
"""

import json
import os
import re
import sys
import urllib.request
from pathlib import Path

from openai import OpenAI

SYSTEM = "You answer questions about weights. Reply with one number only."
NOTES_SYSTEM = "You keep short notes that help answer later questions. Reply with the notes only."

client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
lifecycle = os.environ.get("CODRL_LIFECYCLE", "")
job = json.loads(Path(os.environ["CODRL_TASKS"]).read_text())
seed = int(os.environ.get("CODRL_SEED", "0"))
notes_file = Path(os.environ["CODRL_TASKS"]).with_suffix(".notes.txt")
calls = 0


def ask(messages: list[dict], episode: str, position: int, max_tokens: int) -> str:
    """One model call, tagged so the proxy knows which episode of which task it belongs to."""
    global calls
    calls += 1
    reply = client.chat.completions.create(
        model="policy", messages=messages, max_tokens=max_tokens, temperature=1.0, seed=seed + calls,
        extra_headers={"X-Codrl-Lifecycle": lifecycle, "X-Codrl-Episode": episode,
                       "X-Codrl-Position": str(position)} if lifecycle else None)
    return reply.choices[0].message.content or ""


def report(path: str, body: dict) -> None:
    """POST to the proxy's codrl endpoints (next to /v1 on the same server)."""
    if not lifecycle:
        return
    url = str(client.base_url).rstrip("/").removesuffix("/v1") + path
    request = urllib.request.Request(url, data=json.dumps({"lifecycle": lifecycle, **body}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {client.api_key}"})
    urllib.request.urlopen(request, timeout=60).read()


def grade(reply: str, answer: int) -> float:
    """1 for the exact number, partial credit for a near miss, 0 for no number."""
    found = re.search(r"-?\d+(?:\.\d+)?", reply)
    if found is None:
        return 0.0
    return max(0.0, 1.0 - abs(float(found.group()) - answer) / max(1, abs(answer)))


def main() -> int:
    notes_file.write_text("")
    tasks = job["tasks"]
    for position, task in enumerate(tasks):
        notes = notes_file.read_text().strip()
        question = (f"Notes:\n{notes}\n\n" if notes else "") + f"{task['question']}\nAnswer with the number only."
        reply = ask([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                    "solve", position, max_tokens=12)
        reward = grade(reply, task["answer"])
        feedback = f"You answered {reply.strip()[:40]!r}; the answer was {task['answer']} ({task['fact']})."
        report("/codrl/v1/reward", {"position": position, "reward": reward, "feedback": feedback})
        if position < len(tasks) - 1:  # rewrite the notes for the next question
            update = (f"Your notes:\n{notes or '(none yet)'}\n\nQuestion: {task['question']}\n{feedback}\n\n"
                      "Write your new notes (at most three short lines).")
            new_notes = ask([{"role": "system", "content": NOTES_SYSTEM}, {"role": "user", "content": update}],
                            "update", position, max_tokens=32)
            notes_file.write_text(new_notes.strip()[:300])
    report("/codrl/v1/end", {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
