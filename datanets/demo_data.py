# ruff: noqa: E501  (prose data: one question/answer per line reads better than wrapped strings)
"""Demo rows for `make run`: home gardening questions and answers from three contributors (short, consistent
answers that a small model can learn from)."""

DEMO_SLUG = "home-gardening"
DEMO_DESCRIPTION = """Practical answers for growing vegetables and herbs at home.

**What belongs here:** one question per row, answered in one to three plain sentences that a beginner can follow.
Say *when*, *how much* or *how often* where it matters.

- Keep answers specific to home gardens and balconies.
- No brand names, no personal contact details.
"""

CONTRIBUTORS = {
    "ada_gardener": [
        (
            "When should I plant tomatoes outside?",
            "Plant tomatoes outside after the last frost, when nights stay above 10 °C. Harden the seedlings off for a week first.",
        ),
        (
            "How often should I water tomatoes?",
            "Water tomatoes deeply two or three times a week rather than a little every day. Water the soil, not the leaves.",
        ),
        (
            "Why are my tomato leaves turning yellow?",
            "Yellow lower leaves usually mean a lack of nitrogen or too much water. Feed with compost and let the soil dry a little between waterings.",
        ),
        (
            "Do tomatoes need support?",
            "Yes. Tie tall tomato varieties to a stake or cage as they grow so the stems do not snap under the fruit.",
        ),
        (
            "Should I remove tomato side shoots?",
            "On tall (cordon) tomatoes, pinch out the side shoots that grow between the stem and a leaf. Bush tomatoes can keep them.",
        ),
        (
            "How much sun do tomatoes need?",
            "Tomatoes need at least six to eight hours of direct sun a day to ripen well.",
        ),
        (
            "How do I stop tomatoes from splitting?",
            "Split tomatoes come from uneven watering. Water regularly and mulch the soil so it stays evenly moist.",
        ),
        (
            "When are tomatoes ready to pick?",
            "Pick tomatoes when they are fully coloured and give slightly when pressed. They also ripen indoors on a sunny windowsill.",
        ),
        (
            "Can I grow tomatoes in pots?",
            "Yes. Use a pot of at least 20 litres with good drainage, rich compost, and water daily in hot weather.",
        ),
        (
            "What causes blossom end rot on tomatoes?",
            "Blossom end rot is a black patch at the bottom of the fruit caused by irregular watering, which stops calcium reaching it. Water evenly.",
        ),
        (
            "How do I grow peppers at home?",
            "Sow peppers indoors in late winter, keep them warm, and plant them out in a sunny, sheltered spot after the last frost.",
        ),
        (
            "Why are my pepper flowers falling off?",
            "Pepper flowers drop when nights are too cold or days are above 30 °C. They set fruit again when temperatures settle.",
        ),
    ],
    "ben_grower": [
        (
            "When should I plant garlic?",
            "Plant garlic cloves in autumn, a few weeks before the ground freezes. Set them 5 cm deep, pointed end up.",
        ),
        (
            "How deep should I plant potatoes?",
            "Plant seed potatoes about 10 cm deep and 30 cm apart, then pile soil over the stems as they grow.",
        ),
        (
            "When are potatoes ready to harvest?",
            "Early potatoes are ready when the plants flower. Main crop potatoes are ready two weeks after the leaves die back.",
        ),
        (
            "How do I grow carrots?",
            "Sow carrot seeds thinly in loose, stone-free soil from spring to summer, and keep the soil moist until they sprout.",
        ),
        (
            "Why are my carrots forked?",
            "Forked carrots come from stony or freshly manured soil. Grow them in loose soil that was manured the year before.",
        ),
        (
            "How far apart should I plant onions?",
            "Plant onion sets 10 cm apart in rows 25 cm apart, with the tips just showing above the soil.",
        ),
        (
            "When do I harvest onions?",
            "Harvest onions when the leaves turn yellow and fall over. Dry them in the sun for a week before storing.",
        ),
        (
            "How do I grow lettuce in summer?",
            "Sow lettuce little and often, give it afternoon shade, and water it well so it does not bolt in the heat.",
        ),
        (
            "Why does my lettuce taste bitter?",
            "Lettuce turns bitter when it is hot and dry and starts to flower. Pick it young and keep it watered.",
        ),
        (
            "How do I grow peas?",
            "Sow peas in early spring 5 cm deep and give them netting or twigs to climb. Pick the pods often to keep them coming.",
        ),
        (
            "When should I sow beans?",
            "Sow beans outside once the soil is warm, usually late spring. Runner beans need a tall support to climb.",
        ),
        (
            "How do I store potatoes?",
            "Store dry, unwashed potatoes in a dark, cool, frost-free place in paper or hessian sacks.",
        ),
    ],
    "cleo_compost": [
        (
            "How do I start a compost heap?",
            "Mix green waste like grass and peelings with brown waste like cardboard and dry leaves, about half and half, in a bin on bare soil.",
        ),
        (
            "Why does my compost smell bad?",
            "Smelly compost has too much wet green waste and too little air. Add shredded cardboard and turn the heap.",
        ),
        ("Can I compost citrus peel?", "Yes, in small amounts. Citrus peel breaks down slowly, so chop it up first."),
        (
            "How long does compost take?",
            "A well-turned heap makes compost in three to six months; an untouched heap takes about a year.",
        ),
        (
            "What should I not put in compost?",
            "Do not compost meat, fish, dairy, cooked food, pet waste or diseased plants.",
        ),
        (
            "How do I know when compost is ready?",
            "Compost is ready when it is dark, crumbly, and smells like earth, with no recognisable scraps left.",
        ),
        (
            "What is mulch and why use it?",
            "Mulch is a layer of compost, straw or bark on the soil. It keeps moisture in, stops weeds, and feeds the soil.",
        ),
        (
            "How often should I water basil?",
            "Water basil when the top centimetre of soil feels dry, usually every two days in summer. Avoid wetting the leaves.",
        ),
        (
            "How do I stop basil from flowering?",
            "Pinch out the flower buds and the top pair of leaves every week so basil stays bushy and leafy.",
        ),
        (
            "Can I grow herbs on a windowsill?",
            "Yes. Basil, parsley, chives and mint grow well on a bright windowsill in pots with drainage holes.",
        ),
        (
            "How do I keep mint from spreading?",
            "Grow mint in a pot, or sink a bottomless pot into the ground, so its roots cannot spread through the bed.",
        ),
        (
            "How do I get rid of slugs without chemicals?",
            "Pick slugs off in the evening, use beer traps, and protect seedlings with copper tape or crushed shells.",
        ),
    ],
}
