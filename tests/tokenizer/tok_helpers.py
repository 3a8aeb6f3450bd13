"""Shared hypothesis strategies for tokenizer tests (imported by name: the folder is on sys.path)."""

from hypothesis import strategies as st

# Pieces that stress pre-tokenisation and byte merging: emoji (incl. ZWJ sequences and flags), CJK,
# combining marks, long whitespace runs, digits, contractions, control characters, RTL scripts.
FRAGMENTS = [
    "😀", "👩‍👩‍👧", "🇫🇷", "你好世界", "日本語のテキスト", "한국어", "e\u0301", "a\u0308\u0323", "\u0301",
    "      ", "\n\n\n", "\t\t", " \n ", "\r\n", "\u00a0", "\u3000", "1234567890", " 42", "3.14159",
    "don't", "I'M", "they're", "we'll", "'s", "'ve", "\x00", "\x07", "\x1b[0m", "\x7f", "\u200b",
    "مرحبا", "שלום", "Привет", "ﬁ", "Å", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0010fffd", "<|", "|>", "$$", "...", "--",
]
hard_text = st.lists(
    st.one_of(
        st.text(max_size=12),
        st.sampled_from(FRAGMENTS),
        st.text(alphabet=" \t\n\r\u00a0\u2003", min_size=1, max_size=40),
        st.from_regex(r"[0-9]{1,12}", fullmatch=True),
    ),
    max_size=25,
).map("".join)
