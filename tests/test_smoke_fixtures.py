from lmdemo import load_model


def test_fixture_models_load(char_model, word_model):
    assert load_model(char_model).tokenizer.level == "char"
    assert load_model(word_model).tokenizer.level == "word"
