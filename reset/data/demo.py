"""The built-in demo data set: instruction-following (IF) and context-grounded (CD) examples,
generated from a seed, nothing downloaded.

- IF examples (kind "instruction", task "open"): templated requests about everyday topics, each
  with 1-2 verifiable IFEval constraints written into the instruction; the reference follows them.
- CD examples (kind "grounded"): extractive QA over a short passage (about 40% of passages are
  counterfactual: they contradict common knowledge, so the right answer follows the passage, not
  memory) and abstractive summaries of short invented news articles. References reword the
  passage rather than copy it. About 25% of them also carry one simple constraint.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from reset.data.records import Example
from reset.ifeval import check, count_sentences, count_words, describe

SOURCE_IF = "demo-instruction"
SOURCE_CD = "demo-grounded"
COUNTERFACTUAL_SHARE = 0.4
GROUNDED_CONSTRAINT_SHARE = 0.25
EXTRACTIVE_SHARE = 0.5

# --------------------------------------------------------------------------- IF vocabulary

# Each topic: a noun phrase and short sentences that make sense under any request template.
TOPICS: list[tuple[str, list[str]]] = [
    ("cycling to work", [
        "Cycling to work builds fitness without a trip to the gym.",
        "It saves money on fuel, parking and bus tickets.",
        "Riders often arrive at the office more awake and in a better mood.",
        "A good lock and bright lights make the daily ride safer.",
        "Starting with one or two rides a week makes the habit easy to keep.",
    ]),
    ("drinking enough water", [
        "Drinking enough water helps the body control its temperature.",
        "Even mild thirst can make it harder to focus on work.",
        "Carrying a refillable bottle is the simplest way to drink more.",
        "Fruit and soup also count toward the water you need each day.",
        "Pale yellow urine is a handy sign that you are drinking enough.",
    ]),
    ("learning a second language", [
        "Learning a second language opens doors to new friends and new jobs.",
        "Short daily practice works better than one long session each week.",
        "Listening to songs and podcasts trains the ear for natural speech.",
        "Making mistakes out loud is part of how speaking improves.",
        "A new language also changes how you notice your own.",
    ]),
    ("reading before bed", [
        "Reading before bed helps the mind slow down after a busy day.",
        "A paper book avoids the bright light of a phone screen.",
        "Even ten pages a night add up to many books each year.",
        "Fiction lets you rest by stepping into someone else's story.",
        "Keeping the same bedtime routine makes it easier to fall asleep.",
    ]),
    ("keeping a vegetable garden", [
        "A vegetable garden gives you fresh food just steps from the kitchen.",
        "Tomatoes, beans and lettuce are forgiving crops for beginners.",
        "Gardening is gentle exercise that gets you outside every day.",
        "Watering early in the morning keeps plants healthy in hot weather.",
        "Sharing a surplus harvest is a friendly way to meet neighbours.",
    ]),
    ("walking in nature", [
        "Walking in nature lowers stress and clears the head.",
        "Forest paths are softer on the knees than city pavements.",
        "Birdsong and fresh air make even a short walk feel restful.",
        "Comfortable shoes and a bottle of water are all you need.",
        "Walking with a friend turns exercise into a good conversation.",
    ]),
    ("cooking at home", [
        "Cooking at home lets you choose exactly what goes into each meal.",
        "Home meals usually cost far less than eating out.",
        "Simple dishes like soups and stir fries are quick to learn.",
        "Cooking a large batch on Sunday saves time during the week.",
        "Sharing a home cooked dinner brings family and friends together.",
    ]),
    ("saving money every month", [
        "Saving money every month builds a cushion for unexpected bills.",
        "Moving a fixed amount on payday makes saving automatic.",
        "Small cuts such as fewer takeaway coffees add up over a year.",
        "An emergency fund reduces worry about sudden repairs.",
        "Tracking spending for one month shows where the money really goes.",
    ]),
    ("learning to play the guitar", [
        "Learning to play the guitar gives you music wherever you go.",
        "Three or four basic chords are enough to play many popular songs.",
        "Fifteen minutes of practice a day beats one long weekly session.",
        "Sore fingertips fade after a few weeks of regular playing.",
        "Playing with other people makes practice more fun.",
    ]),
    ("volunteering in your community", [
        "Volunteering connects you with people you might never meet otherwise.",
        "Local food banks and libraries often need a few extra hands.",
        "Helping others is a proven way to lift your own mood.",
        "Volunteer work can teach skills that also help in a career.",
        "Even two hours a month can make a real difference.",
    ]),
    ("getting enough sleep", [
        "Getting enough sleep helps memory, mood and the immune system.",
        "Most adults need about seven to nine hours each night.",
        "A dark and cool bedroom makes deep sleep easier.",
        "Caffeine late in the afternoon can keep you awake at night.",
        "Going to bed at the same time each day steadies the body clock.",
    ]),
    ("adopting a dog from a shelter", [
        "Adopting a dog from a shelter gives an animal a second chance.",
        "Shelter staff can match you with a dog that suits your home.",
        "Daily walks with a dog keep the owner active too.",
        "Many shelter dogs already know basic commands.",
        "Patience during the first weeks helps a new dog settle in.",
    ]),
    ("taking short breaks at work", [
        "Taking short breaks at work keeps attention sharp through the day.",
        "Standing up and stretching eases a stiff back and neck.",
        "Looking away from the screen every hour rests the eyes.",
        "A quick walk often helps solve a problem you were stuck on.",
        "Breaks make long tasks feel less tiring.",
    ]),
    ("visiting local museums", [
        "Visiting local museums is a cheap way to learn something new.",
        "Many museums offer free entry on certain days of the month.",
        "Guided tours reveal stories you would miss on your own.",
        "Children often love hands on science exhibits.",
        "A slow visit to one room can be better than rushing through all of them.",
    ]),
    ("keeping a journal", [
        "Keeping a journal helps you understand your own thoughts.",
        "Writing for five minutes each evening is enough to start.",
        "A journal records small joys that are easy to forget.",
        "Looking back at old entries shows how much you have grown.",
        "There is no wrong way to write in a private notebook.",
    ]),
    ("learning to swim", [
        "Learning to swim is a skill that can save your life.",
        "Swimming works the whole body while being gentle on the joints.",
        "Adult beginner classes are common at public pools.",
        "Floating calmly is the first step before learning any stroke.",
        "Regular lessons build confidence in the water quickly.",
    ]),
    ("planting trees in cities", [
        "Planting trees in cities cools streets during hot summers.",
        "Trees clean the air and give birds a place to nest.",
        "Shady streets invite people to walk instead of drive.",
        "Neighbourhood planting days bring residents together.",
        "Young trees need regular watering in their first two years.",
    ]),
    ("using public transport", [
        "Using public transport cuts traffic and air pollution.",
        "A train ride gives you time to read or rest.",
        "Monthly passes are often cheaper than running a car.",
        "Planning apps show live arrival times for buses and trams.",
        "Fewer cars on the road make cities quieter and safer.",
    ]),
    ("practicing yoga", [
        "Practicing yoga improves flexibility and balance.",
        "Slow breathing during yoga calms the nervous system.",
        "A mat and a quiet corner are enough to begin at home.",
        "Beginner classes teach safe ways to hold each pose.",
        "Ten minutes of stretching in the morning can ease back pain.",
    ]),
    ("baking bread at home", [
        "Baking bread at home fills the kitchen with a wonderful smell.",
        "Flour, water, salt and yeast are all a basic loaf needs.",
        "Kneading the dough is oddly relaxing after a long day.",
        "Homemade bread has no hidden additives.",
        "A warm slice with butter is a simple reward for the effort.",
    ]),
    ("recycling household waste", [
        "Recycling household waste keeps useful materials out of landfills.",
        "Rinsing jars and cans makes them easier to recycle.",
        "Separate bins in the kitchen make sorting a quick habit.",
        "Recycled paper and metal save energy compared with new materials.",
        "Checking local rules avoids putting the wrong items in the bin.",
    ]),
    ("playing chess", [
        "Playing chess trains planning and patience.",
        "The rules can be learned in an afternoon.",
        "Online games let you find an opponent at any hour.",
        "Studying a few openings helps beginners avoid early traps.",
        "Chess clubs welcome players of every age and level.",
    ]),
    ("camping with family", [
        "Camping with family trades screens for stars and campfires.",
        "Children learn practical skills like pitching a tent.",
        "A simple menu keeps cooking outdoors stress free.",
        "Checking the weather forecast avoids a cold and wet night.",
        "Shared adventures become stories the family tells for years.",
    ]),
    ("learning basic first aid", [
        "Learning basic first aid prepares you to help in an emergency.",
        "Short courses teach how to treat cuts, burns and sprains.",
        "Knowing how to call for help quickly can save precious minutes.",
        "A small first aid kit belongs in every home and car.",
        "Practice on a training dummy builds confidence for real situations.",
    ]),
    ("composting kitchen scraps", [
        "Composting kitchen scraps turns waste into rich soil for plants.",
        "Fruit peels, coffee grounds and eggshells all compost well.",
        "Mixing in dry leaves keeps the pile from smelling.",
        "Turning the compost every few weeks speeds up the process.",
        "Compost reduces the amount of rubbish sent to landfills.",
    ]),
    ("birdwatching", [
        "Birdwatching teaches you to notice small details outdoors.",
        "A pair of binoculars and a field guide are enough to start.",
        "Early morning is the best time to see and hear birds.",
        "Keeping a list of species turns every walk into a small quest.",
        "Feeders in the garden bring birds close to the window.",
    ]),
]

REQUEST_TEMPLATES = [
    "Describe the benefits of {topic}.",
    "Write a short paragraph about {topic}.",
    "Explain why someone might start {topic}.",
    "What should a beginner know about {topic}?",
    "Give me some practical advice about {topic}.",
    "Tell a friend why {topic} is worth trying.",
    "Share a few thoughts on {topic}.",
    "Write a brief note for a newsletter about {topic}.",
    "Convince a skeptical reader that {topic} is a good idea.",
    "Summarize the main points about {topic} for a busy reader.",
]

FORBIDDEN_POOL = [
    "boring", "expensive", "impossible", "dangerous", "terrible", "never", "always", "perfect",
    "cheap", "hard", "waste", "lazy", "money", "time", "people",
]
END_PHRASES = [
    "Is there anything else I can help with?",
    "Any other questions?",
    "Does that answer your question?",
    "What do you think?",
]
POSTSCRIPTS = [
    "Start small and enjoy the process.",
    "A little progress each day adds up.",
    "Tell me how it goes.",
    "Give it a try this week.",
]
STOPWORDS = {
    "about", "after", "also", "always", "because", "before", "being", "could", "during", "enough",
    "every", "makes", "might", "often", "other", "their", "there", "these", "things", "those",
    "while", "without", "would", "your", "more", "than", "into", "that", "with", "what", "where",
}

# Constraint kinds for IF examples and those that cannot go together.
IF_CONSTRAINTS = [
    "number_words", "number_sentences", "existence", "forbidden_words", "number_bullet_lists",
    "english_lowercase", "english_capital", "no_comma", "end_checker", "quotation", "title", "postscript",
]
_CLASHES = {
    frozenset({"english_lowercase", "english_capital"}),
    frozenset({"number_bullet_lists", "quotation"}),
    frozenset({"english_lowercase", "end_checker"}),
    frozenset({"english_capital", "end_checker"}),
    frozenset({"english_lowercase", "postscript"}),
    frozenset({"english_capital", "postscript"}),
    frozenset({"number_words", "number_sentences"}),
}

# --------------------------------------------------------------------------- counterfactual facts

# name, fact template with {A}, question(s), reference template(s), true answer, counterfactuals,
# neutral filler sentences (true whatever the counterfactual says).
WELL_KNOWN: list[dict[str, Any]] = [
    dict(name="The Eiffel Tower", fact="The Eiffel Tower is a wrought iron tower that stands in {A}.",
         questions=["In which city does the Eiffel Tower stand?", "Where is the Eiffel Tower located?"],
         refs=["According to the passage, it stands in {A}.", "The tower is located in {A}."],
         true="Paris", false=["Rome", "Madrid", "Vienna"],
         fillers=["It is about 330 metres tall and was once the tallest structure in the world.",
                  "Millions of visitors climb its stairs or ride its lifts every year.",
                  "Its iron frame is repainted every few years to protect it from rust."]),
    dict(name="Water", fact="At sea level, pure water boils at {A}.",
         questions=["At what temperature does water boil at sea level?"],
         refs=["Based on the text, the boiling point is {A}.", "Its boiling point at sea level is {A}."],
         true="100 degrees Celsius", false=["40 degrees Celsius", "70 degrees Celsius", "150 degrees Celsius"],
         fillers=["Water covers most of the surface of the planet and is vital for all known life.",
                  "Its molecules are made of two hydrogen atoms and one oxygen atom.",
                  "At higher altitudes the air pressure drops and cooking takes longer."]),
    dict(name="The first crewed Moon landing", fact="The first crewed Moon landing took place in {A}.",
         questions=["In which year did the first crewed Moon landing take place?",
                    "When did people first land on the Moon?"],
         refs=["The passage says it happened in {A}.", "The landing happened in {A}."],
         true="1969", false=["1958", "1975", "1983"],
         fillers=["Two astronauts walked on the surface while a third orbited above them.",
                  "The mission was watched on television by hundreds of millions of people.",
                  "The crew brought rock samples back to Earth for scientists to study."]),
    dict(name="Mount Everest", fact="Mount Everest, the highest mountain on Earth, rises in the {A}.",
         questions=["In which mountain range is Mount Everest?"],
         refs=["According to the passage, it is in the {A}.", "Mount Everest is located in the {A}."],
         true="Himalayas", false=["Alps", "Andes", "Rocky Mountains"],
         fillers=["Its summit is close to nine kilometres above sea level.",
                  "Climbers often use bottled oxygen because the air near the top is so thin.",
                  "Expeditions usually aim for the short windows of calm spring weather."]),
    dict(name="Hamlet", fact="The tragedy Hamlet was written by {A}.",
         questions=["Who wrote Hamlet?", "Who is the author of the play Hamlet?"],
         refs=["The passage credits {A} as the author.", "Hamlet is a play by {A}."],
         true="William Shakespeare", false=["Charles Dickens", "Jane Austen", "Mark Twain"],
         fillers=["The play follows a Danish prince who seeks revenge for his father.",
                  "It is one of the most performed plays in the world.",
                  "Many of its lines have become common sayings in English."]),
    dict(name="The Great Wall", fact="The Great Wall is a chain of ancient fortifications built in {A}.",
         questions=["In which country was the Great Wall built?"],
         refs=["According to the passage, it was built in {A}.", "The Great Wall is located in {A}."],
         true="China", false=["India", "Peru", "Egypt"],
         fillers=["Its sections stretch for thousands of kilometres across hills and deserts.",
                  "Watchtowers along the wall were used to send signals with smoke and fire.",
                  "Today some restored sections are popular with hikers and tourists."]),
    dict(name="The Mona Lisa", fact="The Mona Lisa was painted by {A}.",
         questions=["Who painted the Mona Lisa?"],
         refs=["The passage names {A} as the painter.", "It is a work by {A}."],
         true="Leonardo da Vinci", false=["Pablo Picasso", "Vincent van Gogh", "Rembrandt"],
         fillers=["The portrait is famous for the faint smile of its sitter.",
                  "It hangs behind protective glass and draws large crowds every day.",
                  "The painting is small, measuring less than one metre in height."]),
    dict(name="The Amazon River", fact="The Amazon River empties into the {A}.",
         questions=["Into which ocean does the Amazon River flow?"],
         refs=["According to the passage, it flows into the {A}.", "The Amazon River flows into the {A}."],
         true="Atlantic Ocean", false=["Pacific Ocean", "Indian Ocean", "Arctic Ocean"],
         fillers=["It carries more water than any other river in the world.",
                  "Its basin is covered by a vast rainforest full of plants and animals.",
                  "Boats are the main way to travel between many towns along its banks."]),
    dict(name="Mars", fact="The planet Mars has {A} small moons.",
         questions=["How many moons does Mars have?"],
         refs=["The passage says Mars has {A} moons.", "Mars has {A} moons in total."],
         true="two", false=["five", "nine", "seven"],
         fillers=["It is often called the Red Planet because of the iron oxide dust on its surface.",
                  "Robotic rovers have explored its dry valleys and old riverbeds.",
                  "A day on Mars lasts a little longer than a day on Earth."]),
    dict(name="The telephone", fact="The telephone was patented by {A}.",
         questions=["Who patented the telephone?"],
         refs=["According to the passage, {A} patented it.", "{A} holds the patent for the telephone."],
         true="Alexander Graham Bell", false=["Thomas Edison", "Nikola Tesla", "Guglielmo Marconi"],
         fillers=["The device turned the human voice into electrical signals sent along a wire.",
                  "Early telephones needed human operators to connect each call.",
                  "Within a few decades telephone lines linked cities across the country."]),
    dict(name="Gold", fact="Gold has the chemical symbol {A}.",
         questions=["What is the chemical symbol for gold?"],
         refs=["The passage gives its symbol as {A}.", "Gold is written with the symbol {A}."],
         true="Au", false=["Gd", "Go", "Gl"],
         fillers=["It is a soft and shiny metal that does not rust.",
                  "People have used it for coins and jewellery for thousands of years.",
                  "It also conducts electricity well and is used in electronics."]),
    dict(name="Spiders", fact="Spiders are arachnids that have {A} legs.",
         questions=["How many legs does a spider have?"],
         refs=["According to the passage, a spider has {A} legs.", "Every spider has {A} legs."],
         true="eight", false=["six", "ten", "twelve"],
         fillers=["Many of them spin silk webs to catch insects.",
                  "Their silk is stronger than steel of the same thickness.",
                  "Most species are harmless to people and help control pests."]),
    dict(name="The Statue of Liberty", fact="The Statue of Liberty was a gift to the United States from {A}.",
         questions=["Which country gave the Statue of Liberty to the United States?"],
         refs=["According to the passage, it came from {A}.", "The statue came from {A}."],
         true="France", false=["Spain", "Italy", "Portugal"],
         fillers=["The copper statue turned green as it weathered over many years.",
                  "It holds a torch high above the harbour.",
                  "Visitors reach it by ferry and can climb up to its crown."]),
    dict(name="Japan", fact="The capital city of Japan is {A}.",
         questions=["What is the capital of Japan?"],
         refs=["According to the passage, the capital is {A}.", "Japan's capital is {A}."],
         true="Tokyo", false=["Osaka", "Kyoto", "Sapporo"],
         fillers=["The country is made up of thousands of islands.",
                  "Its fast bullet trains link the largest cities.",
                  "Cherry blossom season draws crowds to parks every spring."]),
    dict(name="Australia", fact="The capital city of Australia is {A}.",
         questions=["What is the capital of Australia?"],
         refs=["According to the passage, the capital is {A}.", "Australia's capital is {A}."],
         true="Canberra", false=["Perth", "Darwin", "Hobart"],
         fillers=["The country is home to kangaroos, koalas and many other unusual animals.",
                  "Most of its people live in cities near the coast.",
                  "Its dry interior is known as the outback."]),
    dict(name="The Pacific Ocean", fact="The largest ocean on Earth is the {A}.",
         questions=["Which is the largest ocean on Earth?"],
         refs=["According to the passage, it is the {A}.", "The biggest ocean on Earth is the {A}."],
         true="Pacific Ocean", false=["Arctic Ocean", "Indian Ocean", "Southern Ocean"],
         fillers=["Oceans cover most of the surface of the planet.",
                  "Their deepest trenches reach more than ten kilometres below the surface.",
                  "Ocean currents move heat around the globe and shape the weather."]),
    dict(name="Universal gravitation", fact="The law of universal gravitation was formulated by {A}.",
         questions=["Who formulated the law of universal gravitation?"],
         refs=["According to the passage, {A} formulated it.", "The law comes from {A}."],
         true="Isaac Newton", false=["Charles Darwin", "Marie Curie", "Galileo Galilei"],
         fillers=["The law explains why objects fall and why planets orbit the Sun.",
                  "It states that every mass attracts every other mass.",
                  "Astronomers used it to predict the return of comets."]),
    dict(name="The Titanic", fact="The passenger liner Titanic sank in {A} after striking an iceberg.",
         questions=["In which year did the Titanic sink?"],
         refs=["According to the passage, it sank in {A}.", "The Titanic went down in {A}."],
         true="1912", false=["1931", "1898", "1924"],
         fillers=["It was sailing on its first voyage across the Atlantic.",
                  "There were not enough lifeboats for everyone on board.",
                  "The disaster led to new rules for safety at sea."]),
    dict(name="The Olympic Games", fact="The ancient Olympic Games were first held in {A}.",
         questions=["Where were the ancient Olympic Games first held?"],
         refs=["According to the passage, they began in {A}.", "The ancient games started in {A}."],
         true="Greece", false=["Egypt", "Norway", "Persia"],
         fillers=["Athletes competed in running, wrestling and chariot races.",
                  "Winners received a simple crown of olive leaves.",
                  "The modern games revived the tradition more than a century ago."]),
    dict(name="The human heart", fact="The human heart has {A} chambers.",
         questions=["How many chambers does the human heart have?"],
         refs=["According to the passage, it has {A} chambers.", "A human heart is divided into {A} chambers."],
         true="four", false=["three", "six", "five"],
         fillers=["It pumps blood through the body about seventy times a minute at rest.",
                  "Valves inside it keep the blood flowing in one direction.",
                  "Regular exercise helps keep it strong."]),
    dict(name="Ludwig van Beethoven", fact="The composer Ludwig van Beethoven was born in {A}.",
         questions=["Where was Beethoven born?", "In which city was Ludwig van Beethoven born?"],
         refs=["According to the passage, he was born in {A}.", "Beethoven's birthplace is {A}."],
         true="Bonn", false=["Lisbon", "Prague", "Oslo"],
         fillers=["He kept composing even after he lost his hearing.",
                  "His nine symphonies are performed by orchestras around the world.",
                  "He spent much of his working life in Vienna."]),
    dict(name="The Sahara", fact="The Sahara, a vast hot desert, lies in {A}.",
         questions=["On which continent is the Sahara?"],
         refs=["According to the passage, it lies in {A}.", "The Sahara is found in {A}."],
         true="Africa", false=["Asia", "South America", "Australia"],
         fillers=["Its sand dunes can be taller than a large building.",
                  "Daytime heat gives way to cold nights.",
                  "Camels have carried goods across it for centuries."]),
    dict(name="Penicillin", fact="Penicillin was discovered by {A}.",
         questions=["Who discovered penicillin?"],
         refs=["According to the passage, {A} discovered it.", "Penicillin was found by {A}."],
         true="Alexander Fleming", false=["Louis Pasteur", "Robert Koch", "Edward Jenner"],
         fillers=["The discovery began with mould growing on a forgotten lab dish.",
                  "It became one of the first widely used antibiotics.",
                  "It has saved millions of lives by treating bacterial infections."]),
    dict(name="The Nile", fact="The Nile flows north and empties into the {A}.",
         questions=["Into which sea does the Nile flow?"],
         refs=["According to the passage, it flows into the {A}.", "The Nile ends in the {A}."],
         true="Mediterranean Sea", false=["Red Sea", "Black Sea", "Caspian Sea"],
         fillers=["It is one of the longest rivers in the world.",
                  "Farmers along its banks have relied on its floods for thousands of years.",
                  "Its delta is a broad and fertile plain."]),
    dict(name="Honey", fact="Honey is made by {A} from the nectar of flowers.",
         questions=["Which insects make honey?"],
         refs=["According to the passage, {A} make it.", "Honey comes from {A}."],
         true="bees", false=["wasps", "beetles", "moths"],
         fillers=["It can last for a very long time without spoiling.",
                  "Its colour and taste depend on the flowers that were visited.",
                  "People have collected it since ancient times."]),
]

# Neutral sentences that fit any well-known entity, to pad short passages.
NEUTRAL_FILLERS = [
    "This subject often comes up in school lessons, in museum exhibits and in many popular trivia quizzes.",
    "Encyclopedias, textbooks and travel guides all describe it in some detail for curious readers.",
    "Many people first learn about it when they are children and remember the lesson for years.",
    "Teachers sometimes use it as an example when they explain how to check facts against a source.",
]

# --------------------------------------------------------------------------- fictional entities

_SYL_A = ["Bar", "Cal", "Dun", "El", "Fen", "Gor", "Hal", "Ith", "Kel", "Lor", "Mar", "Nor", "Or", "Pel",
          "Quen", "Ros", "Sel", "Tam", "Ul", "Ver", "Wen", "Yar", "Zan", "Brae", "Corm"]
_SYL_B = ["ford", "wick", "mere", "holt", "dale", "brook", "stead", "ton", "by", "haven", "moor", "ridge"]
_FIRST = ["Anna", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira",
          "Leon", "Mira", "Nils", "Olga", "Pavel", "Rosa", "Stefan", "Tilda", "Viktor"]
_LAST = ["Arkwell", "Brandt", "Corvin", "Dallow", "Eskel", "Ferrow", "Gantry", "Holloway", "Ibsworth",
         "Jarrow", "Kestrel", "Lindqvist", "Morrow", "Nettle", "Orwin", "Pelham", "Quill", "Rooke"]
_RIVERS = ["Alder", "Brisk", "Coldwater", "Dimmer", "Elwen", "Fallow", "Greyling", "Hushing", "Ivory"]
_PRODUCTS = ["blue cheese", "wool blankets", "glass lanterns", "apple cider", "clay pots", "river trout",
             "copper bells", "honey cakes", "wooden toys", "paper kites"]
_INVENTIONS = ["folding bicycle", "solar kettle", "pocket loom", "wind powered pump", "clockwork radio",
               "floating lantern", "rain gauge", "snow melting brick"]
_JOBS = ["teacher", "ship engineer", "watchmaker", "librarian", "railway clerk", "botanist"]
_MAKES = ["electric scooters", "garden tools", "hiking boots", "water filters", "board games",
          "ceramic tiles", "bicycle lights", "sailing ropes"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]


def _town(rng: random.Random) -> str:
    return rng.choice(_SYL_A) + rng.choice(_SYL_B)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _fictional_passage(rng: random.Random) -> tuple[list[str], list[dict[str, Any]]]:
    """Sentences about an invented entity, and the facts one can ask about (question, refs, answer)."""
    kind = rng.choice(["town", "inventor", "company"])
    if kind == "town":
        t, river, prod = _town(rng), rng.choice(_RIVERS), rng.choice(_PRODUCTS)
        year, pop, month = str(rng.randint(1150, 1890)), f"{rng.randint(2, 60) * 100:,}", rng.choice(_MONTHS)
        sentences = [
            f"{t} is a quiet market town that grew up on the banks of the {river} River.",
            f"Historians believe the first houses there were built in {year} by farming families.",
            f"Today the town has about {pop} residents and a small railway station.",
            f"{t} is best known for its {prod}, a local speciality sold in shops across the region.",
            f"Every {month} the main square fills with stalls for a week-long fair.",
        ]
        facts = [
            dict(
                q=[f"Which river does {t} stand on?", f"On the banks of which river did {t} grow up?"],
                refs=["According to the passage, it is on the {A} River.", f"{t} lies on the {{A}} River."],
                a=river,
                i=0,
            ),
            dict(
                q=[f"When were the first houses in {t} built?", f"In what year was {t} first settled?"],
                refs=["The passage says the first houses date from {A}.", "The town was first settled in {A}."],
                a=year,
                i=1,
            ),
            dict(
                q=[f"How many residents does {t} have?"],
                refs=[
                    "According to the passage, roughly {A} people live there.",
                    f"About {{A}} residents live in {t}.",
                ],
                a=pop,
                i=2,
            ),
            dict(
                q=[f"What is {t} best known for?", f"What product is {t} famous for?"],
                refs=["According to the passage, it is famous for its {A}.", f"{t} is famous for its {{A}}."],
                a=prod,
                i=3,
            ),
            dict(
                q=[f"In which month is the fair in {t} held?"],
                refs=["According to the passage, the fair is held in {A}.", "The yearly fair takes place in {A}."],
                a=month,
                i=4,
            ),
        ]
    elif kind == "inventor":
        p, born, inv, job = _person(rng), _town(rng), rng.choice(_INVENTIONS), rng.choice(_JOBS)
        y1 = rng.randint(1820, 1950)
        y2 = y1 + rng.randint(22, 45)
        first = p.split()[0]
        sentences = [
            f"{p} was born in the village of {born} in {y1} and grew up in a family of farmers.",
            f"Before turning to invention, {first} worked for many years as a {job}.",
            f"In {y2}, {first} built the first working {inv} in a rented workshop.",
            f"The design was copied widely and earned {first} several national prizes.",
            f"A small museum in {born} now displays the original drawings.",
        ]
        facts = [
            dict(
                q=[f"Where was {p} born?", f"In which village was {p} born?"],
                refs=[
                    f"According to the passage, {first} was born in {{A}}.",
                    f"{first} came from the village of {{A}}.",
                ],
                a=born,
                i=0,
            ),
            dict(
                q=[f"What did {p} invent?", f"Which device did {p} build first?"],
                refs=[f"According to the passage, {first} invented the {{A}}.", f"{first} built the first {{A}}."],
                a=inv,
                i=2,
            ),
            dict(
                q=[f"In which year did {p} build the first {inv}?"],
                refs=["According to the passage, it was built in {A}.", "The first one was made in {A}."],
                a=str(y2),
                i=2,
            ),
            dict(
                q=[f"What was {p}'s job before inventing?"],
                refs=[f"According to the passage, {first} was a {{A}}.", f"The text says {first} worked as a {{A}}."],
                a=job,
                i=1,
            ),
        ]
    else:
        c = rng.choice(_SYL_A) + rng.choice(["tek", "wright", "works", "line", "craft"])
        founder, hq, makes = _person(rng), _town(rng), rng.choice(_MAKES)
        year, staff = str(rng.randint(1960, 2015)), f"{rng.randint(3, 90) * 10:,}"
        sentences = [
            f"{c} is a family owned company that was founded in {year} by {founder}.",
            f"Its headquarters and main factory are located in the town of {hq}.",
            f"The firm designs and sells {makes} for customers in more than twenty countries.",
            f"At present it employs about {staff} people and trains a group of apprentices every year.",
        ]
        facts = [
            dict(
                q=[f"Who founded {c}?", f"Which person started the company {c}?"],
                refs=["According to the passage, it was founded by {A}.", f"{c} was started by {{A}}."],
                a=founder,
                i=0,
            ),
            dict(
                q=[f"Where is {c} based?", f"In which town are the headquarters of {c}?"],
                refs=["According to the passage, it is based in {A}.", f"{c} has its headquarters in {{A}}."],
                a=hq,
                i=1,
            ),
            dict(
                q=[f"What does {c} make?", f"What products does {c} sell?"],
                refs=["According to the passage, it makes {A}.", f"{c} produces {{A}}."],
                a=makes,
                i=2,
            ),
            dict(
                q=[f"When was {c} founded?"],
                refs=["According to the passage, it was founded in {A}.", f"{c} was established in {{A}}."],
                a=year,
                i=0,
            ),
            dict(
                q=[f"How many people does {c} employ?"],
                refs=["According to the passage, about {A} people.", f"{c} has roughly {{A}} employees."],
                a=staff,
                i=3,
            ),
        ]
    return sentences, facts


QA_TEMPLATES = [
    "{q}",
    "Answer the question using the passage. {q}",
    "Read the passage and answer: {q}",
    "Based only on the passage above, {ql}",
    "Use the context to answer this question in one sentence. {q}",
    "Question: {q} Answer according to the passage.",
]

# --------------------------------------------------------------------------- invented news events

SUMMARY_TEMPLATES = [
    "Summarize the article in one or two sentences.",
    "Write a brief summary of the passage.",
    "In one or two sentences, what is this article about?",
    "Give a short summary of the news report above.",
    "Condense the passage into a short summary for a busy reader.",
    "What are the key points of this article? Answer briefly.",
]


def _event(rng: random.Random) -> tuple[list[str], list[str], dict[str, Any]]:
    """An invented news article (sentences), summary options and key facts."""
    town, month = _town(rng), rng.choice(_MONTHS)
    kind = rng.choice(["festival", "factory", "bridge", "species", "flood", "library"])
    if kind == "festival":
        n = f"{rng.randint(5, 60) * 1000:,}"
        what = rng.choice(["kite", "lantern", "folk music", "cheese", "boat"])
        art = [
            f"The town of {town} held its first {what} festival last {month}.",
            f"Organisers said that about {n} visitors came over the three days of the event.",
            "Local hotels were fully booked and extra buses ran from the nearby city.",
            f"Mayor {_person(rng)} described the weekend as the busiest in the history of the town.",
            "Plans for a second edition next year are already under way.",
        ]
        sums = [
            f"{town} drew roughly {n} visitors to its first {what} festival in {month}.",
            f"Around {n} people attended the first {what} festival in {town} in {month}, "
            "and organisers plan to repeat it.",
        ]
        key = {"entity": town, "number": n, "when": month}
    elif kind == "factory":
        c = rng.choice(_SYL_A) + rng.choice(["tek", "works", "craft"])
        n = str(rng.randint(12, 95) * 10)
        makes = rng.choice(_MAKES)
        art = [
            f"The manufacturer {c} opened a new factory in {town} in {month}.",
            f"The plant will produce {makes} and is expected to create {n} jobs.",
            "Construction took two years and was partly funded by a regional grant.",
            "Managers said most of the new staff will be hired from the surrounding area.",
        ]
        sums = [
            f"In {month}, {c} opened a factory in {town} that should bring {n} jobs making {makes}.",
            f"{c} started a new {makes} plant in {town} in {month}, with {n} jobs expected.",
        ]
        key = {"entity": c, "number": n, "when": month}
    elif kind == "bridge":
        cost = str(rng.randint(3, 40))
        river = rng.choice(_RIVERS)
        art = [
            f"A new footbridge across the {river} River opened in {town} in {month}.",
            f"The bridge cost {cost} million euros and took eighteen months to build.",
            "It links the old town centre with a growing neighbourhood on the far bank.",
            "Cyclists and pedestrians crowded onto the deck on the opening morning.",
            "Engineers said the design can carry a load far greater than expected traffic.",
        ]
        sums = [
            f"{town} opened a {cost} million euro footbridge over the {river} River in {month}.",
            f"In {month}, a new bridge costing {cost} million euros opened over the {river} River in {town}.",
        ]
        key = {"entity": town, "number": cost, "when": month}
    elif kind == "species":
        lead = _person(rng)
        n = str(rng.randint(3, 14))
        animal = rng.choice(["beetle", "frog", "orchid", "moth", "snail"])
        art = [
            f"Scientists working near {town} announced in {month} that they had found a new species of {animal}.",
            f"The team, led by {lead}, recorded {n} individuals in a small patch of wet forest.",
            "The animal had never been described before despite decades of surveys in the area.",
            "The researchers have asked for the forest to be protected while more studies take place.",
        ]
        sums = [
            f"In {month}, a team led by {lead} reported a new {animal} species near {town}, after finding {n} of them.",
            f"Researchers under {lead} discovered a previously unknown {animal} near {town} in {month}.",
        ]
        key = {"entity": lead, "number": n, "when": month}
    elif kind == "flood":
        n = str(rng.randint(20, 400))
        art = [
            f"Heavy rain caused the river to burst its banks in {town} in {month}.",
            f"Emergency services said {n} homes were flooded and several roads were closed.",
            "Volunteers filled sandbags through the night to protect the school and the clinic.",
            "No injuries were reported and the water level began to fall two days later.",
        ]
        sums = [
            f"Floods in {town} in {month} left {n} homes under water, but nobody was hurt.",
            f"In {month}, the river overflowed in {town} and flooded {n} homes without causing injuries.",
        ]
        key = {"entity": town, "number": n, "when": month}
    else:
        n = f"{rng.randint(10, 80) * 1000:,}"
        art = [
            f"A new public library opened its doors in {town} in {month}.",
            f"The building holds about {n} books as well as a music room and a children's corner.",
            "It replaces an older library that had been closed because of a leaking roof.",
            f"Head librarian {_person(rng)} said that more than a thousand cards were issued in the first week.",
        ]
        sums = [
            f"{town} opened a new public library with around {n} books in {month}.",
            f"In {month}, {town} got a new library holding about {n} books to replace its old one.",
        ]
        key = {"entity": town, "number": n, "when": month}
    return art, sums, key


# --------------------------------------------------------------------------- builders


def _strip_commas(text: str) -> str:
    return text.replace(", ", " ").replace(",", "")


def _content_words(text: str) -> list[str]:
    words = [w.strip(".,!?'\"").lower() for w in text.split()]
    return sorted({w for w in words if len(w) >= 5 and w.isalpha() and w not in STOPWORDS})


def _pick_if_constraints(rng: random.Random, families: Sequence[str] = IF_CONSTRAINTS) -> list[str]:
    n = 1 if rng.random() < 0.5 or len(families) < 2 else 2
    while True:
        kinds = rng.sample(list(families), n)
        if n == 1 or frozenset(kinds) not in _CLASHES:
            return kinds


# IFEval's change_case checks also ask langdetect whether the text is English, and langdetect
# misreads some short all-capitals texts: such a draw of sentences is redrawn (same constraints).
_LANGDETECT_IDS = ("change_case:english_capital", "change_case:english_lowercase")
_MAX_DRAWS = 50


def _build_if(rng: random.Random, index: int, families: Sequence[str] = IF_CONSTRAINTS) -> Example:
    topic, sentences = rng.choice(TOPICS)
    kinds = _pick_if_constraints(rng, families)
    for _ in range(_MAX_DRAWS):
        ex = _draw_if(rng, index, kinds, topic, sentences)
        if all(check(c, ex.response) for c in ex.constraints if c["id"] in _LANGDETECT_IDS):
            _assert_follows(ex)
            return ex
        topic, sentences = rng.choice(TOPICS)
    raise AssertionError(f"no reference for {kinds} that langdetect reads as English in {_MAX_DRAWS} draws")


def _draw_if(rng: random.Random, index: int, kinds: list[str], topic: str, sentences: list[str]) -> Example:
    decorated = sum(k in kinds for k in ("title", "postscript", "end_checker"))
    n_sent = rng.randint(2, 4 - (1 if decorated else 0))
    start = rng.randint(0, len(sentences) - n_sent)
    chosen = sentences[start : start + n_sent] if rng.random() < 0.5 else sorted(rng.sample(sentences, n_sent))
    if "no_comma" in kinds:
        chosen = [_strip_commas(s) for s in chosen]

    constraints: list[dict[str, Any]] = []
    if "number_bullet_lists" in kinds:
        text = "\n".join(f"* {s}" for s in chosen)
        constraints.append({"id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": len(chosen)}})
    else:
        text = " ".join(chosen)
    if "existence" in kinds:
        words = _content_words(text)
        keywords = rng.sample(words, min(len(words), rng.randint(1, 2)))
        constraints.append({"id": "keywords:existence", "kwargs": {"keywords": keywords}})
    if "title" in kinds:
        text = f"<<{topic.title()}>>\n{text}"
        constraints.append({"id": "detectable_format:title", "kwargs": {}})
    if "postscript" in kinds:
        marker = rng.choice(["P.S.", "P.P.S"])
        text = f"{text}\n\n{marker} {rng.choice(POSTSCRIPTS)}"
        constraints.append({"id": "detectable_content:postscript", "kwargs": {"postscript_marker": marker}})
    if "end_checker" in kinds:
        phrase = rng.choice(END_PHRASES)
        text = f"{text} {phrase}"
        constraints.append({"id": "startend:end_checker", "kwargs": {"end_phrase": phrase}})
    if "no_comma" in kinds:
        constraints.append({"id": "punctuation:no_comma", "kwargs": {}})
    if "english_lowercase" in kinds:
        text = text.lower()
        constraints.append({"id": "change_case:english_lowercase", "kwargs": {}})
    if "english_capital" in kinds:
        text = text.upper()
        constraints.append({"id": "change_case:english_capital", "kwargs": {}})
    if "quotation" in kinds:
        text = f'"{text}"'
        constraints.append({"id": "startend:quotation", "kwargs": {}})
    if "forbidden_words" in kinds:
        lower = text.lower()
        pool = [w for w in FORBIDDEN_POOL if w not in lower]
        constraints.append(
            {"id": "keywords:forbidden_words", "kwargs": {"forbidden_words": rng.sample(pool, rng.randint(1, 3))}}
        )
    if "number_words" in kinds:
        constraints.append(
            {
                "id": "length_constraints:number_words",
                "kwargs": _length_kwargs(rng, count_words(text), "num_words", step=5),
            }
        )
    if "number_sentences" in kinds:
        constraints.append(
            {
                "id": "length_constraints:number_sentences",
                "kwargs": _length_kwargs(rng, count_sentences(text), "num_sentences", step=1),
            }
        )

    rng.shuffle(constraints)
    # The bullet description ends with an example list: keep it last in the prompt.
    constraints.sort(key=lambda c: c["id"] == "detectable_format:number_bullet_lists")
    request = rng.choice(REQUEST_TEMPLATES).format(topic=topic)
    instruction = " ".join([request, *(describe(c) for c in constraints)])
    ex = Example(
        id=f"demo-if-{index:05d}",
        source=SOURCE_IF,
        kind="instruction",
        instruction=instruction,
        response=text,
        task="open",
        constraints=constraints,
        meta={"topic": topic},
    )
    return ex


def _length_kwargs(rng: random.Random, actual: int, name: str, step: int) -> dict[str, Any]:
    """A threshold that `actual` satisfies, rounded to `step` like a person would write it."""
    if rng.random() < 0.5:
        n = ((actual + rng.randint(1, 3 * step)) // step + 1) * step
        return {"relation": "less than", name: n}
    n = max(1, (actual - rng.randint(0, 3 * step)) // step * step)
    return {"relation": "at least", name: n}


def _assert_follows(ex: Example) -> None:
    ex.validate()
    for c in ex.constraints:
        if not check(c, ex.response):
            raise AssertionError(f"{ex.id}: reference does not follow {c}: {ex.response!r}")


def _grounded_constraint(rng: random.Random, response: str) -> tuple[str, dict[str, Any]]:
    """One simple constraint for a grounded example, and the reference rewritten to follow it."""
    kind = rng.choice(["number_words", "no_comma", "english_lowercase"])
    if kind == "english_lowercase":
        lowercase = {"id": "change_case:english_lowercase", "kwargs": {}}
        if check(lowercase, response.lower()):
            return response.lower(), lowercase
        kind = "no_comma"  # langdetect does not read this one as English
    if kind == "no_comma":
        return _strip_commas(response), {"id": "punctuation:no_comma", "kwargs": {}}
    n = ((count_words(response) + rng.randint(2, 10)) // 5 + 1) * 5
    return response, {"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": n}}


def _fit_passage(rng: random.Random, sentences: list[str], required: set[int], lo: int = 50, hi: int = 110) -> str:
    """The required sentences plus random others, in their original order, until the passage has at
    least `lo` words and 3 sentences (at most 5)."""
    chosen = set(required)
    others = [i for i in range(len(sentences)) if i not in chosen]
    rng.shuffle(others)

    def words() -> int:
        return count_words(" ".join(sentences[i] for i in chosen))

    while others and len(chosen) < 5 and (len(chosen) < 3 or words() < lo):
        chosen.add(others.pop())
    # Still short: swap the shortest optional sentence for the longest unused one.
    while others and words() < lo:
        longest = max(others, key=lambda i: count_words(sentences[i]))
        optional = [i for i in chosen if i not in required]
        if not optional:
            break
        shortest = min(optional, key=lambda i: count_words(sentences[i]))
        if count_words(sentences[longest]) <= count_words(sentences[shortest]):
            break
        chosen.discard(shortest)
        chosen.add(longest)
        others.remove(longest)
    text = " ".join(sentences[i] for i in sorted(chosen))
    if not (lo <= count_words(text) <= hi):
        raise AssertionError(f"passage of {count_words(text)} words: {text!r}")
    return text


def _pick_ref(rng: random.Random, refs: list[str]) -> str:
    """A reference template: the one citing the passage ("According to the passage, ...") 30% of the
    time, the plain restatement otherwise."""
    return refs[0] if rng.random() < 0.3 else refs[1]


def _build_extractive(rng: random.Random, index: int, counterfactual: bool) -> Example:
    meta: dict[str, Any] = {}
    if counterfactual:
        ent = rng.choice(WELL_KNOWN)
        answer = rng.choice(ent["false"])
        sentences = list(ent["fillers"])
        rng.shuffle(sentences)
        pos = rng.randint(0, 2)
        sentences.insert(pos, ent["fact"].format(A=answer))
        sentences += rng.sample(NEUTRAL_FILLERS, 2)
        context = _fit_passage(rng, sentences, {pos})
        question, ref_tpl = rng.choice(ent["questions"]), _pick_ref(rng, ent["refs"])
        meta.update(counterfactual=True, memory_answer=ent["true"], entity=ent["name"])
    else:
        sentences, facts = _fictional_passage(rng)
        fact = rng.choice(facts)
        context = _fit_passage(rng, sentences, {0, fact["i"]})
        answer, question, ref_tpl = fact["a"], rng.choice(fact["q"]), _pick_ref(rng, fact["refs"])
        meta.update(counterfactual=False)
    meta["answer"] = answer
    response = ref_tpl.replace("{A}", answer)
    response = response[0].upper() + response[1:]
    ql = question[0].lower() + question[1:]
    instruction = rng.choice(QA_TEMPLATES).format(q=question, ql=ql)
    return _grounded_example(index, instruction, response, context, "extractive", meta)


def _build_abstractive(rng: random.Random, index: int) -> Example:
    article, summaries, key = _event(rng)
    context = _fit_passage(rng, article, {0, 1})
    response = rng.choice(summaries)
    instruction = rng.choice(SUMMARY_TEMPLATES)
    return _grounded_example(index, instruction, response, context, "abstractive", {"key_facts": key})


def _grounded_example(
    index: int, instruction: str, response: str, context: str, task: str, meta: dict[str, Any]
) -> Example:
    return Example(
        id=f"demo-cd-{index:05d}",
        source=SOURCE_CD,
        kind="grounded",
        instruction=instruction,
        response=response,
        context=context,
        task=task,
        constraints=[],
        meta=meta,
    )


def _spread(rng: random.Random, n: int, share: float) -> set[int]:
    """round(n * share) indices out of range(n), chosen at random."""
    return set(rng.sample(range(n), round(n * share)))


def build_demo(
    seed: int = 0,
    n_instruction: int = 300,
    n_grounded: int = 300,
    families: Sequence[str] | None = None,
) -> tuple[list[Example], list[Example]]:
    """(instruction examples, grounded examples), deterministic for a seed. `families`: the
    constraint kinds IF examples draw from (default: all of IF_CONSTRAINTS)."""
    if n_instruction < 0 or n_grounded < 0:
        raise ValueError("n_instruction and n_grounded must be >= 0")
    families = list(families) if families else list(IF_CONSTRAINTS)
    unknown = sorted(set(families) - set(IF_CONSTRAINTS))
    if unknown:
        raise ValueError(f"unknown constraint kinds {unknown}; known: {IF_CONSTRAINTS}")
    rng = random.Random(seed)
    instruction: list[Example] = []
    seen: set[str] = set()
    for i in range(n_instruction):
        for _ in range(100):  # redraw a prompt that repeats an earlier one (the mixer would drop it)
            ex = _build_if(rng, i, families)
            if ex.instruction not in seen:
                break
        seen.add(ex.instruction)
        instruction.append(ex)

    n_extractive = round(n_grounded * EXTRACTIVE_SHARE)
    counterfactual = _spread(rng, n_extractive, COUNTERFACTUAL_SHARE)
    constrained = _spread(rng, n_grounded, GROUNDED_CONSTRAINT_SHARE)
    tasks = ["extractive"] * n_extractive + ["abstractive"] * (n_grounded - n_extractive)
    order = list(range(n_grounded))
    rng.shuffle(order)  # interleave the two tasks; ids still count up
    grounded: list[Example] = []
    for i, slot in enumerate(order):
        if tasks[slot] == "extractive":
            ex = _build_extractive(rng, i, slot in counterfactual)
        else:
            ex = _build_abstractive(rng, i)
        if i in constrained:
            ex.response, c = _grounded_constraint(rng, ex.response)
            ex.constraints = [c]
            ex.instruction = f"{ex.instruction} {describe(c)}"
        _assert_follows(ex)
        grounded.append(ex)
    return instruction, grounded
