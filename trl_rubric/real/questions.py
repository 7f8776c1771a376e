"""Everyday health and science questions for the real-model rubric world, written for this project.

Each topic holds five questions; each question carries one prompt-specific criterion: a key term a good answer
mentions, with the regular expression that checks it. Train and held-out prompts are split by topic (see
`trl_rubric.real.world`), so held-out scores measure what a student carries over to topics it never trained on.
"""

from __future__ import annotations

#: topic -> (domain, [(question, key term as the rubric names it, regex that finds it)]).
QUESTIONS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "common cold": (
        "health",
        [
            ("What can I do at home to feel better with a common cold?", "rest", r"\brest"),
            ("How do I ease a stuffy nose from a cold?", "saline spray or steam", r"saline|steam"),
            ("Should I drink more when I have a cold?", "fluids such as water", r"\bfluids?\b|\bwater\b"),
            ("How long does a common cold usually last?", "about a week", r"\bweek\b|7 to 10|seven"),
            ("How can I avoid passing my cold to my family?", "washing hands", r"wash\w* (your )?hands|hand ?washing"),
        ],
    ),
    "headache": (
        "health",
        [
            ("What helps a tension headache go away?", "rest in a quiet room", r"\bquiet\b|\brest"),
            ("Can drinking water help with a headache?", "dehydration", r"dehydrat"),
            ("How can I prevent headaches from screen use?", "screen breaks", r"\bbreaks?\b"),
            ("Is it safe to take painkillers for a headache?", "the dose on the label", r"\bdos(e|age)\b|\blabel\b"),
            ("Why do I get headaches when I skip meals?", "low blood sugar", r"blood sugar|glucose"),
        ],
    ),
    "sunburn": (
        "health",
        [
            ("How can I treat a mild sunburn at home?", "aloe vera", r"\baloe\b"),
            ("What should I put on sunburned skin to cool it?", "a cool compress", r"\bcool\b|\bcold\b"),
            ("How do I stop getting sunburned at the beach?", "sunscreen", r"sunscreen|sun ?block"),
            ("Should I pop the blisters from a sunburn?", "leaving blisters alone", r"\bblisters?\b"),
            ("Why does sunburned skin peel?", "damaged skin cells", r"\bcells?\b"),
        ],
    ),
    "sleep": (
        "health",
        [
            ("How can I fall asleep faster at night?", "a regular bedtime", r"\bregular\b|\bsame time\b|\broutine\b"),
            ("Does using my phone in bed hurt my sleep?", "blue light", r"blue light|\bscreens?\b"),
            ("Is it bad to drink coffee in the afternoon?", "caffeine", r"caffeine"),
            ("What should I do if I wake up at 3 am and cannot sleep?", "getting out of bed", r"out of bed|get up"),
            (
                "How many hours of sleep does an adult need?",
                "seven to nine hours",
                r"\b(7|seven)\b.*\b(9|nine)\b|\b8\b|\beight\b",
            ),
        ],
    ),
    "back pain": (
        "health",
        [
            ("What can I do for lower back pain after lifting boxes?", "gentle movement", r"gentle|\bwalk"),
            ("Should I use heat or ice on a sore back?", "heat or ice", r"\bheat\b|\bice\b"),
            ("How can I sit at my desk without hurting my back?", "posture", r"posture"),
            ("Which exercises help prevent back pain?", "stretching", r"stretch"),
            ("How should I lift heavy things safely?", "bending the knees", r"\bknees?\b"),
        ],
    ),
    "allergies": (
        "health",
        [
            ("How can I reduce hay fever symptoms in spring?", "pollen", r"pollen"),
            ("What helps itchy eyes from allergies?", "antihistamines", r"antihistamine"),
            (
                "How do I keep dust mites out of my bedroom?",
                "washing bedding in hot water",
                r"\bbedding\b|\bsheets\b|hot water",
            ),
            ("Can I be allergic to my cat?", "pet dander", r"dander"),
            ("What is the difference between a cold and allergies?", "fever", r"\bfever\b"),
        ],
    ),
    "upset stomach": (
        "health",
        [
            ("What should I eat after a stomach bug?", "bland foods", r"bland|toast|rice|banana"),
            ("How can I settle nausea at home?", "ginger", r"ginger"),
            ("How do I avoid dehydration when I have diarrhea?", "oral rehydration", r"rehydrat|electrolyte"),
            ("Why do I get bloated after meals?", "eating slowly", r"slow"),
            ("What helps with constipation?", "fibre", r"fib(er|re)"),
        ],
    ),
    "cuts and scrapes": (
        "health",
        [
            ("How do I clean a small cut on my finger?", "running water", r"\bwater\b"),
            ("Should I cover a scrape or let it air out?", "a bandage", r"bandage|plaster|dressing"),
            ("How can I stop a small cut from bleeding?", "pressure", r"pressure"),
            ("How do I know if a cut is infected?", "redness", r"red(ness)?\b"),
            ("Do I need a tetanus shot for a rusty nail cut?", "tetanus", r"tetanus"),
        ],
    ),
    "heat and hydration": (
        "health",
        [
            ("How much water should I drink on a hot day?", "drinking regularly", r"\bwater\b|\bdrink"),
            ("What are the signs of heat exhaustion?", "dizziness", r"dizz"),
            ("How can I stay cool during a heat wave?", "shade", r"shade|\bfan\b|air condition"),
            ("Are sports drinks better than water when exercising?", "electrolytes", r"electrolyte|\bsalts?\b"),
            ("How do I keep an older relative safe in hot weather?", "checking on them", r"check"),
        ],
    ),
    "stress": (
        "health",
        [
            ("How can I calm down when I feel stressed?", "slow breathing", r"breath"),
            ("Does exercise help with stress?", "a walk", r"\bwalk"),
            ("How can I manage stress before an exam?", "a study plan", r"\bplan\b|schedule"),
            ("Why does stress make it hard to sleep?", "cortisol", r"cortisol|hormone"),
            ("How can I relax after a long work day?", "a hobby", r"hobby|hobbies|music|read"),
        ],
    ),
    "sore throat": (
        "health",
        [
            ("What soothes a sore throat?", "warm salt water gargle", r"gargl|salt ?water"),
            ("Is honey good for a sore throat?", "honey", r"\bhoney\b"),
            ("Should I take antibiotics for a sore throat?", "viruses", r"\bvir(us|al)"),
            ("What drinks help a scratchy throat?", "warm tea", r"\btea\b|\bwarm\b"),
            ("How can I protect my voice when my throat hurts?", "resting your voice", r"\brest"),
        ],
    ),
    "sprains": (
        "health",
        [
            ("How do I treat a twisted ankle?", "the RICE method", r"\brice\b|\belevat"),
            ("Should I walk on a sprained ankle?", "rest", r"\brest"),
            ("How long does a sprained wrist take to heal?", "a few weeks", r"\bweeks?\b"),
            ("Is it a sprain or a broken bone?", "an X-ray", r"x-?ray"),
            ("How can I prevent ankle sprains when running?", "good shoes", r"\bshoes?\b|footwear"),
        ],
    ),
    "insect bites": (
        "health",
        [
            ("How do I stop a mosquito bite from itching?", "a cold compress", r"\bcold\b|\bice\b|compress"),
            ("What should I do after a bee sting?", "removing the stinger", r"stinger"),
            ("How do I remove a tick safely?", "tweezers", r"tweezer"),
            ("How can I avoid mosquito bites on a camping trip?", "insect repellent", r"repellent"),
            ("Why do some bites swell more than others?", "an allergic reaction", r"allerg"),
        ],
    ),
    "heartburn": (
        "health",
        [
            ("What can I do about heartburn after dinner?", "smaller meals", r"smaller|small meals"),
            ("Which foods make heartburn worse?", "spicy food", r"spic"),
            ("Does lying down after eating cause heartburn?", "waiting before lying down", r"\bwait|hours?\b"),
            ("Can antacids help with heartburn?", "antacids", r"antacid"),
            (
                "How can I sleep better with acid reflux?",
                "raising the head of the bed",
                r"\brais(e|ing)|\belevat|pillow",
            ),
        ],
    ),
    "weather": (
        "science",
        [
            ("Why does it rain?", "water vapour", r"vapou?r"),
            ("What causes thunder?", "lightning", r"lightning"),
            ("Why is the sky blue?", "scattering of sunlight", r"scatter"),
            ("How do rainbows form?", "refraction", r"refract|bend"),
            ("Why is it colder on top of a mountain?", "air pressure", r"pressure"),
        ],
    ),
    "space": (
        "science",
        [
            ("Why does the Moon change shape during the month?", "phases", r"phases?\b"),
            ("Why do we have seasons?", "the tilt of the Earth", r"\btilt"),
            ("What is a shooting star?", "a meteor", r"meteor"),
            ("Why do astronauts float in space?", "free fall", r"free ?fall|orbit"),
            ("How far away is the Sun?", "150 million kilometres", r"150|93 million"),
        ],
    ),
    "plants": (
        "science",
        [
            ("How do plants make their food?", "photosynthesis", r"photosynthes"),
            ("Why do leaves change colour in autumn?", "chlorophyll", r"chlorophyll"),
            ("Why do plants need water?", "roots", r"\broots?\b"),
            ("How do seeds know which way to grow?", "gravity", r"gravit"),
            ("Why do some plants close their flowers at night?", "pollinators", r"pollinat|insects?\b|\bbees?\b"),
        ],
    ),
    "human body": (
        "science",
        [
            ("Why does my heart beat faster when I run?", "oxygen", r"oxygen"),
            ("Why do we sweat?", "cooling the body", r"\bcool"),
            ("How do our eyes see colours?", "cones in the retina", r"\bcones?\b|retina"),
            ("Why do we get goosebumps?", "tiny muscles", r"muscles?"),
            ("Why do we yawn?", "tiredness", r"tired|sleep"),
        ],
    ),
    "kitchen chemistry": (
        "science",
        [
            ("Why does bread rise?", "yeast", r"\byeast\b"),
            ("Why do apples turn brown after cutting?", "oxidation", r"oxid"),
            ("Why does salt melt ice on roads?", "the freezing point", r"freezing point"),
            ("What happens when baking soda meets vinegar?", "carbon dioxide", r"carbon dioxide|co2"),
            ("Why does water boil faster with a lid on?", "trapped heat", r"\bheat\b"),
        ],
    ),
    "electricity": (
        "science",
        [
            ("How does a battery work?", "chemical energy", r"chemical"),
            ("Why do I get a small shock from a door handle?", "static electricity", r"static"),
            ("What is the difference between a conductor and an insulator?", "electrons", r"electrons?"),
            ("How does a light bulb make light?", "a filament or LED", r"filament|\bled\b|diode"),
            ("Why should we not touch power lines?", "high voltage", r"voltage"),
        ],
    ),
    "animals": (
        "science",
        [
            ("Why do birds fly south for the winter?", "migration", r"migrat"),
            ("How do bees make honey?", "nectar", r"nectar"),
            ("Why do cats purr?", "vibration", r"vibrat"),
            ("How do fish breathe underwater?", "gills", r"\bgills?\b"),
            ("Why do some animals hibernate?", "saving energy", r"energy"),
        ],
    ),
    "oceans": (
        "science",
        [
            ("Why is the sea salty?", "minerals from rocks", r"mineral|rocks?\b"),
            ("What causes ocean tides?", "the Moon's gravity", r"gravit"),
            ("How do waves form?", "wind", r"\bwind"),
            ("Why is the ocean blue?", "absorption of red light", r"absor(b|ption)"),
            ("How deep is the ocean?", "the Mariana Trench", r"mariana|trench"),
        ],
    ),
    "light and sound": (
        "science",
        [
            ("Why do we see lightning before we hear thunder?", "the speed of light", r"speed of light|faster"),
            ("How does an echo happen?", "sound reflecting", r"reflect|bounc"),
            ("Why does a straw look bent in a glass of water?", "refraction", r"refract|bend"),
            ("How do sunglasses protect my eyes?", "UV light", r"\buv\b|ultraviolet"),
            ("Why does a siren sound different as it passes?", "the Doppler effect", r"doppler"),
        ],
    ),
    "earth and rocks": (
        "science",
        [
            ("How are volcanoes formed?", "magma", r"magma|lava"),
            ("What causes earthquakes?", "tectonic plates", r"\bplates?\b|tectonic"),
            ("How are fossils made?", "sediment", r"sediment|mud|layers"),
            (
                "Why are there different kinds of rocks?",
                "the rock cycle",
                r"igneous|sedimentary|metamorphic|rock cycle",
            ),
            ("How do mountains form?", "plates pushing together", r"\bplates?\b|collid|push"),
        ],
    ),
    "recycling and materials": (
        "science",
        [
            ("Why does plastic take so long to break down?", "bacteria cannot digest it", r"bacteria|microb"),
            ("How is glass made?", "sand", r"\bsand\b"),
            ("Why does metal feel colder than wood?", "conducting heat", r"conduct"),
            ("How does recycling paper work?", "pulp", r"\bpulp\b"),
            ("Why does iron rust?", "oxygen and water", r"oxygen|oxid"),
        ],
    ),
    "eyes and vision": (
        "health",
        [
            ("How can I rest my eyes during long screen time?", "the 20-20-20 rule", r"20"),
            ("What helps dry, tired eyes?", "blinking", r"blink"),
            ("How often should I have an eye test?", "every two years", r"\byears?\b"),
            ("Is reading in dim light bad for my eyes?", "eye strain", r"strain"),
            ("How do I get something out of my eye?", "rinsing with clean water", r"rins|flush|water"),
        ],
    ),
}
