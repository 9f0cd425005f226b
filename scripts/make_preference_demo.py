"""Write assets/preference_demo.jsonl: the team-written preference sample (TRL prompt/chosen/rejected messages).

Every prompt has a correct answer (chosen) and a fluent worse answer (rejected) that the untuned model tends
to like: for capitals and arithmetic, chosen gives the answer with its reason or check and rejected is a short,
confident wrong answer (the shorter answer has the higher total log-probability); for the other facts, rejected
is a wrong fact in the same sentence, of the same length. The facts and
sentences below were written by the Tuning Studio team; the script only pairs them up, so the file is
reproducible: `python scripts/make_preference_demo.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "assets" / "preference_demo.jsonl"

# (question, correct short answer, a wrong answer of the same shape)
CAPITALS = [("France", "Paris", "Lyon"), ("Japan", "Tokyo", "Osaka"), ("Italy", "Rome", "Milan"),
            ("Germany", "Berlin", "Munich"), ("Spain", "Madrid", "Barcelona"), ("Canada", "Ottawa", "Toronto"),
            ("Australia", "Canberra", "Sydney"), ("Brazil", "Brasília", "Rio de Janeiro"),
            ("India", "New Delhi", "Mumbai"), ("China", "Beijing", "Shanghai"),
            ("Russia", "Moscow", "Saint Petersburg"),
            ("Egypt", "Cairo", "Alexandria"), ("Kenya", "Nairobi", "Mombasa"), ("Turkey", "Ankara", "Istanbul"),
            ("Portugal", "Lisbon", "Porto"), ("Greece", "Athens", "Thessaloniki"), ("Norway", "Oslo", "Bergen"),
            ("Sweden", "Stockholm", "Gothenburg"), ("Poland", "Warsaw", "Kraków"), ("Ireland", "Dublin", "Cork"),
            ("Argentina", "Buenos Aires", "Córdoba"), ("Mexico", "Mexico City", "Guadalajara"),
            ("South Korea", "Seoul", "Busan"), ("Vietnam", "Hanoi", "Ho Chi Minh City"), ("Peru", "Lima", "Cusco"),
            ("Morocco", "Rabat", "Casablanca"), ("Nigeria", "Abuja", "Lagos"), ("Switzerland", "Bern", "Zurich"),
            ("the Netherlands", "Amsterdam", "Rotterdam"), ("Austria", "Vienna", "Salzburg"),
            ("Chile", "Santiago", "Valparaíso"), ("New Zealand", "Wellington", "Auckland"),
            ("Thailand", "Bangkok", "Chiang Mai"), ("Finland", "Helsinki", "Tampere"),
            ("Pakistan", "Islamabad", "Karachi"), ("Colombia", "Bogotá", "Medellín"),
            ("Belgium", "Brussels", "Antwerp"), ("Denmark", "Copenhagen", "Aarhus"),
            ("Hungary", "Budapest", "Debrecen"),
            ("Czechia", "Prague", "Brno"), ("Ukraine", "Kyiv", "Lviv"), ("Indonesia", "Jakarta", "Surabaya"),
            ("the Philippines", "Manila", "Cebu"), ("Saudi Arabia", "Riyadh", "Jeddah"), ("Iran", "Tehran", "Isfahan"),
            ("Cuba", "Havana", "Santiago de Cuba"), ("Ghana", "Accra", "Kumasi"), ("Ethiopia", "Addis Ababa", "Gondar"),
            ("Iceland", "Reykjavík", "Akureyri"), ("Scotland", "Edinburgh", "Glasgow"), ("Venezuela", "Caracas",
                                                                                        "Maracaibo")]

FACTS = [
    ("How many days are in a week?", "A week has 7 days.", "A week has 5 days."),
    ("How many legs does a spider have?", "A spider has 8 legs.", "A spider has 6 legs."),
    ("What is the boiling point of water at sea level in Celsius?", "Water boils at 100 °C at sea level.",
     "Water boils at 90 °C at sea level."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 °C.", "Water freezes at 10 °C."),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun.",
     "Venus is the closest planet to the Sun."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet.",
     "Jupiter is known as the Red Planet."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet.",
     "Saturn is the largest planet."),
    ("What gas do plants take in for photosynthesis?", "Plants take in carbon dioxide.", "Plants take in helium."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.",
     "The chemical symbol for gold is Ag."),
    ("What is the chemical symbol for sodium?", "The chemical symbol for sodium is Na.",
     "The chemical symbol for sodium is So."),
    ("What is H2O commonly called?", "H2O is water.", "H2O is salt."),
    ("How many continents are there?", "There are 7 continents.", "There are 9 continents."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest.", "The Indian Ocean is the largest."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote it.", "Charles Dickens wrote it."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa.",
     "Vincent van Gogh painted the Mona Lisa."),
    ("How many hours are in a day?", "A day has 24 hours.", "A day has 20 hours."),
    ("How many minutes are in an hour?", "An hour has 60 minutes.", "An hour has 100 minutes."),
    ("How many sides does a triangle have?", "A triangle has 3 sides.", "A triangle has 4 sides."),
    ("How many sides does a hexagon have?", "A hexagon has 6 sides.", "A hexagon has 8 sides."),
    ("What is the square root of 81?", "The square root of 81 is 9.", "The square root of 81 is 8."),
    ("What color do you get by mixing blue and yellow?", "Blue and yellow make green.",
     "Blue and yellow make purple."),
    ("Which animal is the largest mammal?", "The blue whale is the largest mammal.",
     "The elephant is the largest mammal."),
    ("What do bees make?", "Bees make honey.", "Bees make milk."),
    ("What is the main language spoken in Brazil?", "The main language of Brazil is Portuguese.",
     "The main language of Brazil is Spanish."),
    ("What is the tallest mountain above sea level?", "Mount Everest is the tallest mountain.",
     "Mont Blanc is the tallest mountain."),
    ("Which organ pumps blood through the body?", "The heart pumps blood.", "The liver pumps blood."),
    ("How many bones does an adult human have?", "An adult human has 206 bones.", "An adult human has 150 bones."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa.",
     "The Congo is the longest river in Africa."),
    ("In which year did World War II end?", "World War II ended in 1945.", "World War II ended in 1939."),
    ("What is the speed of light, roughly?", "About 300,000 kilometres per second.",
     "About 300 kilometres per second."),
    ("What shape has all sides equal and four right angles?", "A square.", "A triangle."),
    ("Which metal is liquid at room temperature?", "Mercury is liquid at room temperature.",
     "Iron is liquid at room temperature."),
    ("What is the hardest natural material?", "Diamond is the hardest natural material.",
     "Gold is the hardest natural material."),
    ("How many players are on a football (soccer) team on the field?", "Each team has 11 players on the field.",
     "Each team has 9 players on the field."),
    ("What is the smallest prime number?", "The smallest prime number is 2.", "The smallest prime number is 1."),
    ("What do you call a baby cat?", "A baby cat is a kitten.", "A baby cat is a puppy."),
    ("What is the opposite of 'hot'?", "The opposite of hot is cold.", "The opposite of hot is warm."),
    ("What is the opposite of 'early'?", "The opposite of early is late.", "The opposite of early is soon."),
    ("What is the plural of 'mouse'?", "The plural of mouse is mice.", "The plural of mouse is mouses."),
    ("What is the plural of 'child'?", "The plural of child is children.", "The plural of child is childs."),
    ("What is the past tense of 'go'?", "The past tense of go is went.", "The past tense of go is goed."),
    ("How do you spell the number 12 in words?", "Twelve.", "Twelf."),
    ("How many centimetres are in a metre?", "A metre has 100 centimetres.", "A metre has 1,000 centimetres."),
    ("How many grams are in a kilogram?", "A kilogram has 1,000 grams.", "A kilogram has 100 grams."),
    ("How many seconds are in a minute?", "A minute has 60 seconds.", "A minute has 100 seconds."),
    ("How many months are in a year?", "A year has 12 months.", "A year has 10 months."),
    ("Which month has 28 or 29 days?", "February.", "April."),
    ("What is the first letter of the English alphabet?", "A.", "B."),
    ("Which direction does the Sun rise in?", "The Sun rises in the east.", "The Sun rises in the west."),
    ("What is frozen water called?", "Frozen water is ice.", "Frozen water is steam."),
    ("What is the opposite of 'up'?", "The opposite of up is down.", "The opposite of up is over."),
    ("What is the plural of 'foot'?", "The plural of foot is feet.", "The plural of foot is foots."),
    ("What is the past tense of 'eat'?", "The past tense of eat is ate.", "The past tense of eat is eated."),
    ("How many wheels does a bicycle have?", "A bicycle has 2 wheels.", "A bicycle has 3 wheels."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths.",
     "Caterpillars turn into beetles or ants."),
    ("Which star is at the centre of our solar system?", "The Sun.", "The Moon."),
    ("What is the largest desert in Africa?", "The Sahara is the largest desert in Africa.",
     "The Kalahari is the largest desert in Africa."),
    ("How many strings does a standard guitar have?", "A standard guitar has 6 strings.",
     "A standard guitar has 8 strings."),
    ("What is the capital letter form of 'b'?", "B.", "D."),
    ("How many zeros are in one million?", "One million has 6 zeros.", "One million has 5 zeros."),
    ("Which is heavier, a kilogram of iron or a kilogram of feathers?", "They weigh the same: one kilogram each.",
     "The iron is heavier than the feathers."),
    ("What is the main ingredient of guacamole?", "Avocado.", "Tomato."),
    ("How many hearts does an octopus have?", "An octopus has 3 hearts.", "An octopus has 1 heart."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth.",
     "Sirius is the closest star to Earth."),
    ("What is 10 percent of 250?", "10% of 250 is 25.", "10% of 250 is 2.5."),
    ("How many days are in a leap year?", "A leap year has 366 days.", "A leap year has 365 days."),
    ("What is the capital of the United States?", "The capital of the United States is Washington, D.C.",
     "The capital of the United States is New York City."),
    ("Which gas do humans breathe out?", "Humans breathe out carbon dioxide.", "Humans breathe out hydrogen."),
    ("What is the largest country by area?", "Russia is the largest country by area.",
     "Canada is the largest country by area."),
]

CURT = ["{wrong}.", "It's {wrong}.", "{wrong}, of course.", "Easy: {wrong}."]


def arithmetic() -> list[tuple[str, str, str]]:
    """(question, correct answer with its check, a curt wrong answer)."""
    rows = []
    for a, b in [(7, 5), (12, 9), (23, 19), (8, 6), (15, 27), (34, 48), (9, 9), (56, 25), (11, 14), (40, 38),
                 (17, 26), (63, 18), (29, 33), (45, 46), (72, 19), (38, 27), (66, 17), (28, 59), (47, 36), (19, 64)]:
        rows.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}, because {a + b} − {b} = {a}.", str(a + b + 1)))
    for a, b in [(6, 7), (8, 9), (12, 3), (7, 7), (9, 4), (11, 5), (6, 8), (4, 13), (5, 15), (3, 21),
                 (7, 8), (9, 6), (12, 4), (14, 3), (8, 8)]:
        rows.append((f"What is {a} times {b}?", f"{a} × {b} = {a * b}, because {b} added {a} times is {a * b}.",
                     str(a * b + a)))
    for a, b in [(20, 7), (45, 18), (100, 36), (63, 29), (81, 40), (52, 17), (90, 45), (74, 38), (33, 12), (61, 25),
                 (48, 19), (99, 51), (70, 26), (85, 47), (57, 33), (93, 28), (64, 37), (76, 49), (88, 59), (42, 15)]:
        rows.append((f"What is {a} minus {b}?", f"{a} − {b} = {a - b}, because {a - b} + {b} = {a}.",
                     str(a - b - 1)))
    return rows


def capitals() -> list[tuple[str, str, str]]:
    """(question, correct answer that names the usual confusion, a curt wrong answer)."""
    return [(f"What is the capital of {country}?",
             f"The capital of {country} is {right}. {wrong} is another well-known city there, but not the capital.",
             wrong) for country, right, wrong in CAPITALS]


def rows() -> list[dict]:
    out = []
    for i, (question, right, wrong) in enumerate(capitals() + arithmetic()):
        out.append(_row(question, right, CURT[i % len(CURT)].format(wrong=wrong), "curt-wrong"))
    for question, right, wrong in FACTS:
        out.append(_row(question, right, wrong, "wrong"))
    return out


def _row(question: str, chosen: str, rejected: str, kind: str) -> dict:
    return {"prompt": [{"role": "user", "content": question}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "rejected_kind": kind}


if __name__ == "__main__":
    data = rows()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
    print(f"wrote {len(data)} pairs to {OUT}")
