"""Chat prompts for speculative decoding: repetitive work (repeat or edit a given text,
code or JSON; chats that quote an earlier turn) and open-ended questions."""
from __future__ import annotations

PASSAGES = [
    "The lighthouse keeper climbed the narrow stairs every evening at dusk, lit the great lamp, and watched "
    "the ships pass safely beyond the rocks until the first grey light of morning.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])",
    '{"name": "Ada Lovelace", "born": 1815, "fields": ["mathematics", "computing"], "notes": "wrote the first '
    'published algorithm for a machine"}',
    "To make bread, mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise for an hour, "
    "shape it into a loaf, and bake it at two hundred degrees for forty minutes.",
    "SELECT customers.name, SUM(orders.total) AS spent FROM customers JOIN orders ON orders.customer_id = "
    "customers.id GROUP BY customers.name ORDER BY spent DESC LIMIT 10;",
    "Rain fell on the quiet village all night. In the morning the river had risen, the bridge was closed, and "
    "the children watched the brown water carry branches past the mill.",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()",
    '[{"id": 1, "task": "buy milk", "done": false}, {"id": 2, "task": "call the bank", "done": true}, '
    '{"id": 3, "task": "water the plants", "done": false}]',
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. It happens in the "
    "chloroplasts of plant cells, where chlorophyll absorbs mostly red and blue light.",
    "The meeting is moved from Tuesday at ten to Thursday at two, in room 4B on the third floor; please bring "
    "the quarterly report and the updated budget spreadsheet.",
]

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain what a hash table is.",
    "List three prime numbers.", "Tell me a short story about a robot who learns to paint.",
    "Why is the sky blue?", "Give me a tip for learning a new language.", "What does a compiler do?",
    "Describe a cat to someone who has never seen one.", "How do vaccines work?",
]


def repetitive_messages(index: int, passages: int = 1) -> list[dict[str, str]]:
    """A repetitive task over `passages` consecutive passages (from index), joined by a blank line."""
    passage = "\n\n".join(PASSAGES[(index + i) % len(PASSAGES)] for i in range(passages))
    kind = index // len(PASSAGES) % 4
    if kind == 0:
        return [{"role": "user", "content": f"Repeat the following text exactly, word for word:\n\n{passage}"}]
    if kind == 1:
        edited = passage.replace("the", "teh", 1)
        return [{"role": "user", "content": f"Fix the typo in this text and write out the whole corrected text:\n\n"
                                            f"{edited}"}]
    if kind == 2:
        return [{"role": "user", "content": f"Here is a text:\n\n{passage}"},
                {"role": "assistant", "content": "Thank you, I have read it."},
                {"role": "user", "content": "Now quote the text back to me in full."}]
    return [{"role": "user", "content": f"Copy this into your answer, unchanged, then say 'done':\n\n{passage}"}]


def prompt_messages(count: int, open_ended_every: int = 4) -> list[list[dict[str, str]]]:
    """`count` conversations: every `open_ended_every`-th an open-ended question, the rest repetitive work."""
    out = []
    for index in range(count):
        if index % open_ended_every == open_ended_every - 1:
            out.append([{"role": "user", "content": QUESTIONS[index // open_ended_every % len(QUESTIONS)]}])
        else:
            out.append(repetitive_messages(index))
    return out
