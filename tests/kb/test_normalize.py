from kb.normalize import analyse, fix_layout, script_lang, stem, tokens


def test_tokens_fold_case_yo_punctuation_emoji_and_stop_words() -> None:
    assert tokens("Ёлка!!! 😀 Как ПОМЕНЯТЬ пароль?") == tokens("елка как поменять пароль")
    assert "парол" in tokens("ПАРОЛЬ, пароля, паролем")
    assert tokens("I can't log in to my account") == ["not", "log", "account"]


def test_contractions_are_expanded_with_or_without_the_apostrophe() -> None:
    expanded = tokens("my card did not arrive", keep_stop_words=True)
    assert tokens("my card didn't arrive", keep_stop_words=True) == expanded
    assert tokens("my card didnt arrive", keep_stop_words=True) == expanded
    assert tokens("I won\u2019t pay", keep_stop_words=True) == ["i", "will", "not", "pay"]
    # "id" is a word of its own (an ID card), not "I would".
    assert tokens("my id was rejected") == ["id", "reject"]


def test_word_forms_share_a_stem() -> None:
    assert stem("паролем") == stem("пароль")
    assert stem("connecting") == stem("connected")


def test_negation_is_kept() -> None:
    assert "не" in tokens("не работает")
    assert "not" in tokens("it is not working")


def test_layout_ru_typed_in_en_layout() -> None:
    vocab = {stem("привет"), stem("пароль"), stem("забыл")}
    assert fix_layout("ghbdtn", vocab) == "привет"
    assert fix_layout("pf,sk gfhjkm", vocab) == "забыл пароль"


def test_layout_en_typed_in_ru_layout() -> None:
    assert fix_layout("руддщ", {stem("hello")}) == "hello"


def test_layout_leaves_real_words_alone() -> None:
    vocab = {stem("wifi"), stem("роутер")}
    assert fix_layout("wifi роутер", vocab) == "wifi роутер"
    assert fix_layout("qzxv", vocab) == "qzxv"  # unknown either way: unchanged


def test_script_lang() -> None:
    assert script_lang("Привет, VPN") == "ru"
    assert script_lang("hello") == "en"
    assert script_lang("123 !!") is None


def test_analyse_marks_content_words() -> None:
    stems, content = analyse("How do I reset my password?")
    assert stems == [stem(w) for w in ["how", "do", "i", "reset", "my", "password"]]
    assert [s for s, c in zip(stems, content, strict=True) if c] == tokens(
        "How do I reset my password?"
    )


def test_layout_cache_remembers_each_chunk() -> None:
    vocab = {stem("забыл"), stem("пароль")}
    cache: dict[str, str] = {}
    assert fix_layout("pf,sk gfhjkm", vocab, cache) == "забыл пароль"
    assert cache == {"pf,sk": "забыл", "gfhjkm": "пароль"}
    # A cached chunk is answered from the cache (here: a planted value proves it).
    cache["gfhjkm"] = "planted"
    assert fix_layout("gfhjkm", vocab, cache) == "planted"


def test_layout_keeps_a_chunk_whose_words_are_all_known() -> None:
    # "ghb" converts to "при", which a vocabulary might know too; a known word as typed
    # is never a layout mistake.
    vocab = {stem("ghb"), stem("при")}
    assert fix_layout("ghb", vocab) == "ghb"
