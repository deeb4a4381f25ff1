"""The numbers and names that several parts of the runtime share, written once.

Kept free of imports so that a command's `--help` can read them without loading numpy.
"""

# A fingerprint is made of, and a host compared by, this many packets in capture order (the
# paper's 20 sequenced packets, and what the dnp-23 protocol scores).
PACKETS = 20
MIN_PACKETS = 5  # fewer packets than this make no fingerprint
# set: cosine of the set vector of a host's first PACKETS packets with the fingerprint's; set-all: the
# same over all the host's packets; first20 / mean: the paper's mean p(Target) over the host's first
# packets / all of them, kept for comparison (the model card measures all four).
HOST_SCORES = ("set", "set-all", "first20", "mean")
SET_SCORES = ("set", "set-all")
# The default verdict: a score that one host in a hundred (of other vendors) reaches on networks the
# model never saw (tool/cohort.py's calibration).
MAX_FALSE_MATCH = 0.01
FALLBACK_THRESHOLD = 0.5  # the verdict on a raw score when no cohort calibrates it
