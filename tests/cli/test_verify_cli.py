"""lowbit verify between a Hugging Face folder and its QDQ file: models named by their paths,
outputs by their model names, cosine / SQNR / max difference per output, exit 1 on FAIL."""


def test_quantized_copy_reported(lowbit, models, work, quantized):
    qdq = "lowbit-out/bert-W8A8/model.qdq.onnx"
    done = lowbit("verify", models / "bert", qdq, cwd=work)
    assert done.returncode == 1, done.stderr          # W8A8 is not within fp32 tolerance
    out = done.stdout
    assert f"reference: {models / 'bert'} (Hugging Face" in out and f"checked:   {qdq} (" in out
    rows = [ln for ln in out.splitlines() if ln.startswith(("  last_hidden_state:",
                                                            "  pooler_output:"))]
    assert len(rows) == 2 and all(" cosine " in r and " dB  max |diff| " in r for r in rows)
    assert "(rtol=0.0001, atol=1e-05)" in out and "worst elements" in out
    assert f" in {qdq}  (diff " in out

    loose = lowbit("verify", models / "bert", qdq, "--rtol", "0.5", "--atol", "0.5", cwd=work)
    assert loose.returncode == 0 and loose.stdout.rstrip().endswith("PASS: 2 output(s) agree")
