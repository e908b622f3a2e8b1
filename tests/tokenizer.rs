//! Tokenizer ids equal Hugging Face's GPT2TokenizerFast (tests/reference/gpt2_tokenizer_ids.json).

mod common;

use hooklens::Tokenizer;

#[test]
fn gpt2_ids_match_hugging_face() {
    common::assert_tokenizer_matches(&Tokenizer::gpt2().unwrap(), "gpt2_tokenizer_ids.json");
}

#[test]
fn known_gpt2_ids_and_round_trip() {
    let tok = Tokenizer::gpt2().unwrap();
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(
        tok.encode("The capital of France is").unwrap(),
        vec![464, 3139, 286, 4881, 318]
    );
    assert_eq!(tok.bos_token_id, Some(50256));
    let ids = tok.encode_prompt("Hello world", true).unwrap();
    assert_eq!(ids, vec![50256, 15496, 995]);
    assert_eq!(
        tok.to_str_tokens(&ids).unwrap(),
        vec!["<|endoftext|>", "Hello", " world"]
    );
    let s = "naïve café 🎉 code()";
    assert_eq!(tok.decode(&tok.encode(s).unwrap()).unwrap(), s);
}

#[test]
fn byte_tokenizer_is_one_token_per_byte() {
    let tok = Tokenizer::bytes().unwrap();
    assert_eq!(tok.vocab_size(), 257);
    assert_eq!(tok.encode("ab é").unwrap(), vec![97, 98, 32, 0xC3, 0xA9]);
    assert_eq!(tok.bos_token_id, Some(256));
    assert_eq!(
        tok.decode(&tok.encode("hello, world").unwrap()).unwrap(),
        "hello, world"
    );
}
