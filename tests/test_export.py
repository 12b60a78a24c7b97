"""`w2v export`: transformers Wav2Vec2ForCTC -> `w2v import hf` -> `w2v export` -> ONNX Runtime.

Reference: transformers' eval model on the same audio (through its own feature extractor),
log_softmax of its logits, and its tokenizer's batch_decode of the argmax. Tolerance as in
test_model_parity: |onnx - reference| <= 1e-4 * max|reference| + 1e-6 elementwise.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.exporter import ExportError, export_model
from export.trt_check import TrtCheckError, assert_trt_friendly, check_model
from tests.conftest import HF_TOKENS, speech_like
from training.checkpoint import Checkpoint, CheckpointError, atomic_torch_save, file_sha256, load_checkpoint
from training.model import wav2vec2_small
from w2v_serve.cli import main as w2v
from w2v_serve.model_dir import GRAPH_IO, ModelDirectory
from w2v_serve.vocab import Vocabulary

RTOL = 1e-4
# (arch, do_normalize): BASE-style GroupNorm without input normalization, LARGE-style with it.
CASES = [("group", False), ("layer", True)]
LENGTHS = (16000, 12345, 20480)


def assert_close_rel(got: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> None:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    assert err <= rtol * scale + 1e-6, f"max abs error {err:.3g} vs allowed {rtol * scale:.3g}"


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def padded(xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    batch = np.zeros((len(xs), max(len(x) for x in xs)), dtype=np.float32)
    for i, x in enumerate(xs):
        batch[i, : len(x)] = x
    return batch, np.array([len(x) for x in xs], dtype=np.int64)


def greedy_text(log_probs: np.ndarray, vocab: Vocabulary) -> str:
    """CTC greedy decoding: argmax, collapse repeats, drop blanks."""
    ids = [k for k, _ in itertools.groupby(log_probs.argmax(-1).tolist()) if k != vocab.blank_id]
    return vocab.decode(ids)


def strip_specials(text: str) -> str:
    for token in ("<unk>", "<s>", "</s>"):
        text = text.replace(token, "")
    return text


@pytest.fixture(scope="module")
def exported(hf_ctc_factory, tmp_path_factory):
    """(arch, do_normalize) -> (reference model, HF directory, exported model directory), via the CLI."""
    cache: dict = {}

    def make(arch: str, do_normalize: bool):
        key = (arch, do_normalize)
        if key not in cache:
            ref_model, hf_dir = hf_ctc_factory(arch, do_normalize)
            tmp = tmp_path_factory.mktemp(f"export_{arch}_{int(do_normalize)}")
            ckpt = tmp / "model.ckpt"
            assert w2v(["import", "hf", str(hf_dir), "--out", str(ckpt)]) == 0
            assert w2v(["export", str(ckpt), "--out", str(tmp / "model"), "--fp16", "--int8"]) == 0
            cache[key] = (ref_model, hf_dir, tmp / "model")
        return cache[key]

    return make


@pytest.mark.parametrize("arch,do_normalize", CASES)
def test_onnx_log_probs_and_transcripts_match_transformers(arch, do_normalize, exported):
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    ref_model, hf_dir, model_dir = exported(arch, do_normalize)
    md = ModelDirectory.load(model_dir)
    assert md.card.logits_are_log_probs and list(md.vocab.tokens) == HF_TOKENS
    sess = session(md.graph_path("model"))
    fe = Wav2Vec2FeatureExtractor.from_pretrained(hf_dir)
    tokenizer = Wav2Vec2CTCTokenizer(str(model_dir / "vocab.json"))
    ours_text, ref_ids = [], []
    for i, n in enumerate(LENGTHS):
        x = speech_like(n, seed=40 + i, scale=[1.0, 0.02, 2.5][i], dc=[0.0, 0.3, -0.5][i])
        with torch.no_grad():
            ref_in = fe(x, sampling_rate=16000, return_tensors="pt").input_values
            ref = torch.log_softmax(ref_model(ref_in).logits, dim=-1)[0].numpy()
        got, frames = sess.run(None, {"audio": x[None], "lengths": np.array([n], dtype=np.int64)})
        assert frames.tolist() == [ref.shape[0]]
        assert_close_rel(got[0], ref)
        ours_text.append(greedy_text(got[0], md.vocab))
        ref_ids.append(ref.argmax(-1))
    # Padding a row with blank ids (0) changes nothing in CTC decoding. transformers' default
    # batch_decode writes special tokens as literal text ("<unk>"); the project's transcripts
    # leave them out. (skip_special_tokens=True is no substitute: it drops <unk> *before*
    # merging repeats, so "R <unk> R" would become "R".)
    decoded = tokenizer.batch_decode(np.stack([np.pad(r, (0, max(map(len, ref_ids)) - len(r))) for r in ref_ids]))
    ref_text = [" ".join(strip_specials(t).split()) for t in decoded]
    assert ours_text == ref_text
    assert any(t.strip() for t in ref_text), "transcripts are all empty: the comparison would prove nothing"


@pytest.mark.parametrize("arch,do_normalize", CASES)
def test_mixed_length_batch_rows_equal_single_runs(arch, do_normalize, exported):
    """Each row of a padded batch equals that utterance alone — GroupNorm models included."""
    _, _, model_dir = exported(arch, do_normalize)
    sess = session(model_dir / "model.onnx")
    xs = [speech_like(n, seed=60 + n, scale=s, dc=d) for n, s, d in [(16000, 1.0, 0.0), (5120, 0.05, 0.2), (23000, 3.0, -0.4)]]
    audio, lengths = padded(xs)
    got, frames = sess.run(None, {"audio": audio, "lengths": lengths})
    for i, x in enumerate(xs):
        alone, alone_frames = sess.run(None, {"audio": x[None], "lengths": lengths[i : i + 1]})
        assert frames[i] == alone_frames[0] == alone.shape[1]
        assert_close_rel(got[i, : frames[i]], alone[0])
        assert np.array_equal(got[i, : frames[i]].argmax(-1), alone[0].argmax(-1))


@pytest.mark.parametrize("arch,do_normalize", CASES)
def test_encoder_then_transformer_equals_full_graph(arch, do_normalize, exported):
    _, _, model_dir = exported(arch, do_normalize)
    md = ModelDirectory.load(model_dir)
    audio, lengths = padded([speech_like(n, seed=n) for n in (9000, 17000)])
    features, feature_lengths = session(md.graph_path("encoder")).run(None, {"audio": audio, "lengths": lengths})
    got, got_lengths = session(md.graph_path("transformer")).run(
        None, {"features": features, "feature_lengths": feature_lengths})
    ref, ref_lengths = session(md.graph_path("model")).run(None, {"audio": audio, "lengths": lengths})
    assert np.array_equal(got_lengths, ref_lengths) and np.array_equal(feature_lengths, ref_lengths)
    for i, t in enumerate(ref_lengths):
        assert_close_rel(got[i, :t], ref[i, :t], rtol=1e-5)


@pytest.mark.parametrize("arch,do_normalize", CASES)
def test_graphs_are_tensorrt_friendly_and_follow_the_contract(arch, do_normalize, exported):
    _, _, model_dir = exported(arch, do_normalize)
    md = ModelDirectory.load(model_dir)
    for variant in ("fp32", "fp16"):
        for graph, (inputs, outputs) in GRAPH_IO.items():
            model = onnx.load(str(md.graph_path(graph, variant)))
            report = assert_trt_friendly(model, f"{variant} {graph}")
            assert report.opset >= 17
            assert report.ops["GroupNormalization"] == 0 and report.ops["Dropout"] == 0
            if graph != "encoder" or arch == "layer":
                assert report.ops["LayerNormalization"] > 0
            assert [i.name for i in model.graph.input] == list(inputs)
            assert [o.name for o in model.graph.output] == list(outputs)
            # Dynamic batch and time axes; float32 I/O in every variant.
            for value in list(model.graph.input) + list(model.graph.output):
                dims = value.type.tensor_type.shape.dim
                assert all(d.dim_param for d in dims[:2]), (graph, value.name, dims)
            assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            # weight_norm folded: no g/v parameters survive.
            assert not [t.name for t in model.graph.initializer if "weight_g" in t.name or "weight_v" in t.name]


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


def test_fp16_keeps_normalization_and_softmax_in_fp32(exported):
    _, _, model_dir = exported("group", False)
    model = onnx.load(str(model_dir / "model.fp16.onnx"))
    types = tensor_types(model)
    # The per-channel norm's statistics are reductions in its scope
    # (export.graphs.EdgeCorrectedInstanceNorm: ReduceSum, ReduceL2): those stay fp32 too.
    norm_stats = [n for n in model.graph.node if n.op_type.startswith("Reduce") and "/norm/" in n.name]
    fp32_nodes = norm_stats + [n for n in model.graph.node
                               if n.op_type in ("LayerNormalization", "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean")]
    assert {n.op_type for n in fp32_nodes} >= {"LayerNormalization", "Softmax", "LogSoftmax"}
    assert {n.op_type for n in norm_stats} == {"ReduceSum", "ReduceL2"}
    for node in fp32_nodes:
        float_inputs = [types[i] for i in node.input if types.get(i) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
        assert float_inputs and all(t == onnx.TensorProto.FLOAT for t in float_inputs), node.name
    weights = {t.name: t.data_type for t in model.graph.initializer}
    matmul_weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert matmul_weights and all(weights[w] == onnx.TensorProto.FLOAT16 for w in matmul_weights)


def test_model_card_records_source_checks_and_variants(exported, tmp_path):
    _, _, model_dir = exported("group", False)
    card = json.loads((model_dir / "model_card.json").read_text())
    md = ModelDirectory.load(model_dir)
    ckpt_path = model_dir.parent / "model.ckpt"
    assert card["source"]["sha256"] == file_sha256(ckpt_path) and card["source"]["kind"] == "ctc"
    assert (card["sample_rate"], card["frame_stride"], card["receptive_field"]) == (16000, 320, 400)
    assert card["vocabulary"] == HF_TOKENS
    assert card["model_config"] == load_checkpoint(ckpt_path).model_config.to_dict()
    assert set(card["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert set(card["variants"]) == {"fp32", "fp16", "int8"}
    for variant in card["variants"]:
        for graph in GRAPH_IO:
            assert md.graph_path(graph, variant).exists()
        parity = card["checks"]["parity"][variant]
        assert parity["lengths_equal"] and len(parity["batches"]) >= 3
        assert {len(b) for b in parity["batches"]} >= {1, 2}
    assert card["checks"]["parity"]["fp32"]["max_rel_error"] < 1e-5
    assert card["checks"]["parity"]["fp32"]["argmax_agreement"] == 1.0
    assert card["checks"]["parity"]["fp16"]["max_rel_error"] < 1e-2
    assert card["checks"]["parity"]["int8"]["argmax_agreement"] > 0.8
    assert card["checks"]["composition"]["max_rel_error"] <= 1e-5
    # The int8 graph is the one the card describes, and it runs.
    out, _ = session(md.graph_path("model", "int8")).run(
        None, {"audio": speech_like(8000, seed=1)[None], "lengths": np.array([8000])})
    assert np.allclose(np.exp(out).sum(-1), 1.0, atol=1e-3)


def test_whitelist_check_fails_on_unsupported_ops(exported):
    _, _, model_dir = exported("layer", True)
    model = onnx.load(str(model_dir / "encoder.onnx"))
    assert check_model(model).ok
    features = model.graph.output[0].name
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node.append(onnx.helper.make_node("Unique", [features], ["unique_out"], name="unique"))
    with pytest.raises(TrtCheckError, match="Unique"):
        assert_trt_friendly(bad)
    # Supported by TensorRT but banned here: GroupNormalization, and data-dependent control flow.
    for op in ("GroupNormalization", "Loop"):
        banned = onnx.ModelProto()
        banned.CopyFrom(model)
        banned.graph.node.append(onnx.helper.make_node(op, [features], [f"{op}_out"], name=op))
        report = check_model(banned)
        assert not report.ok and op in " ".join(report.problems())
    # ONNX Runtime contrib ops are not TensorRT's.
    contrib = onnx.ModelProto()
    contrib.CopyFrom(model)
    contrib.graph.node.append(onnx.helper.make_node("FastGelu", [features], ["g"], domain="com.microsoft"))
    assert "com.microsoft.FastGelu" in check_model(contrib).unsupported


# ---------------------------------------------------------------------------- bad checkpoints
SMALL_TOKENS = ("<pad>", "|", "a", "b", "c")


def small_checkpoint(**overrides) -> Checkpoint:
    torch.manual_seed(0)
    model = wav2vec2_small(embed_dim=32, num_layers=1, num_heads=2, ffn_dim=64, pos_conv_kernel=8,
                           pos_conv_groups=4, conv_layers=[[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2,
                           **overrides)
    vocab = Vocabulary(SMALL_TOKENS) if model.config.vocab_size else None
    return Checkpoint.from_model(model, vocab)


def test_export_of_a_checkpoint_object_is_fast_and_loadable(tmp_path):
    out = export_model(small_checkpoint(vocab_size=len(SMALL_TOKENS)), tmp_path / "m", check=True)
    md = ModelDirectory.load(out)
    assert md.card.source["sha256"] is None and md.card.variants["fp32"]["model"] == "model.onnx"
    assert not list(tmp_path.glob(".m.*")), "temporary export folder left behind"


def test_missing_and_truncated_checkpoints(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export_model(tmp_path / "nope.ckpt", tmp_path / "out")
    good = tmp_path / "good.ckpt"
    small_checkpoint(vocab_size=len(SMALL_TOKENS)).save(good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        export_model(truncated, tmp_path / "out")
    assert w2v(["export", str(truncated), "--out", str(tmp_path / "out")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pretraining_checkpoint_is_refused(tmp_path):
    path = tmp_path / "pre.ckpt"
    small_checkpoint(quantizer=True).save(path)
    with pytest.raises(CheckpointError, match="pretrain checkpoint without a CTC head"):
        export_model(path, tmp_path / "out")


def test_vocabulary_that_does_not_match_the_head_is_refused(tmp_path):
    ckpt = small_checkpoint(vocab_size=len(SMALL_TOKENS))
    ckpt.vocab = Vocabulary(SMALL_TOKENS + ("d", "e"))
    path = tmp_path / "mismatch.ckpt"
    atomic_torch_save(ckpt.to_dict(), path)  # Checkpoint.save itself refuses to write this
    with pytest.raises(CheckpointError, match="vocabulary does not match the CTC head"):
        export_model(path, tmp_path / "out")
    ckpt.vocab = None
    with pytest.raises(CheckpointError, match="no vocabulary"):
        export_model(ckpt, tmp_path / "out")


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(ExportError, match="opset"):
        export_model(small_checkpoint(vocab_size=len(SMALL_TOKENS)), tmp_path / "out", opset=13)


@pytest.mark.parametrize("kernel,stride,length", [(3, 2, 101), (3, 2, 100), (2, 2, 51), (10, 5, 400)])
def test_conv_as_matmul_equals_the_convolution(kernel, stride, length):
    """The int8 variant's MatMul form of a convolution (time-major) computes the same numbers."""
    from export.graphs import ConvAsMatMul

    torch.manual_seed(kernel + length)
    conv = torch.nn.Conv1d(8, 16, kernel, stride=stride, bias=True)
    x = torch.randn(3, 8, length)
    with torch.no_grad():
        assert torch.allclose(ConvAsMatMul(conv)(x.transpose(1, 2)).transpose(1, 2), conv(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["default", "layer_norm"])
def test_matmul_feature_encoder_equals_the_conv_encoder(arch):
    from export.graphs import inference_copy

    model = small_checkpoint(vocab_size=len(SMALL_TOKENS), extractor_mode=arch).build_model()
    audio, lengths = padded([speech_like(n, seed=n) for n in (4000, 2500)])
    with torch.no_grad():
        ref, ref_frames = model(torch.from_numpy(audio), torch.from_numpy(lengths))
        got, got_frames = inference_copy(model, conv_as_matmul=True)(torch.from_numpy(audio), torch.from_numpy(lengths))
    assert torch.equal(ref_frames, got_frames)
    assert_close_rel(got.numpy(), ref.numpy(), rtol=1e-5)


def test_repository_flag_writes_a_triton_repository(exported, tmp_path):
    _, _, model_dir = exported("layer", True)
    ckpt = model_dir.parent / "model.ckpt"
    repo = tmp_path / "repo"
    assert w2v(["export", str(ckpt), "--out", str(tmp_path / "m"), "--no-check", "--repository", str(repo)]) == 0
    assert ModelDirectory.load(repo / "acoustic" / "1").card.variants["fp32"]["model"] == "model.onnx"


def test_attention_for_export_equals_scaled_dot_product_attention_with_its_scale_folded(exported):
    """export.graphs.FoldedScaleAttention against the training module (float64, padded keys), and
    in the exported graph: no run-time scale (Sqrt) and no elementwise scaling (Mul) of Q or K."""
    from export.graphs import FoldedScaleAttention
    from training.model.components import SelfAttention

    torch.manual_seed(0)
    attention = SelfAttention(64, 4, 0.0).double().eval()
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    bias = torch.zeros(2, 1, 1, 9, dtype=torch.float64)
    bias[1, ..., 6:] = torch.finfo(torch.float64).min              # row 1: 3 padded frames
    with torch.no_grad():
        ref = attention(x, bias)
        folded = FoldedScaleAttention(attention)
        torch.testing.assert_close(folded(x, bias), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(folded(x, None), attention(x, None), rtol=1e-12, atol=1e-12)
    _, _, model_dir = exported("group", False)
    nodes = [n for n in onnx.load(str(model_dir / "model.onnx")).graph.node if "/attention/" in n.name]
    ops = {n.op_type for n in nodes}
    assert "MatMul" in ops and "Softmax" in ops
    assert not ops & {"Sqrt", "Mul", "Div"}, sorted(ops)


@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("lengths", [(1000, 1000), (1000, 997, 991, 640, 400), (1003, 1001, 999)])
def test_edge_corrected_norm_block_equals_the_masked_block_whatever_the_padding(lengths, conv_bias):
    """export.graphs.EdgeCorrectedConvBlock (statistics as full-width sums minus the frames past
    the end that still see valid samples) against the training block run on each row alone
    (float64), with the padding filled with large garbage: each row's valid frames agree to
    1e-12 of their scale."""
    from export.graphs import EdgeCorrectedConvBlock
    from training.model.components import ConvLayerBlock

    torch.manual_seed(0)
    block = ConvLayerBlock(1, 64, 10, 5, conv_bias, "instance").double().eval()
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.2, 0.2)
        edge = EdgeCorrectedConvBlock(block).double()
        n = torch.tensor(lengths)
        x = torch.randn(len(lengths), int(n.max()) + 7, dtype=torch.float64) + 0.3
        x = x + 1000.0 * (torch.arange(x.shape[1]) >= n[:, None])
        out, out_lengths = edge(x.unsqueeze(1), n)
        for row, length in enumerate(lengths):
            ref, ref_length = block(x[row:row + 1, :length].unsqueeze(1), n[row:row + 1])
            assert int(out_lengths[row]) == int(ref_length[0]) == ref.shape[2]
            torch.testing.assert_close(out[row, :, :ref.shape[2]], ref[0], rtol=0, atol=1e-12 * float(ref.abs().max()))


def test_external_data_holds_the_large_weights_and_a_graph_without_any_stays_whole(tmp_path):
    """``move_to_external_data``: a graph with a 4 KiB weight gets GRAPH.onnx.data (and still
    computes the same); one whose weights are all under 1 KiB (a small model's int8 graph can
    be) is left whole, with no data file and None returned."""
    from onnx import TensorProto, helper, numpy_helper

    from export.exporter import move_to_external_data

    def graph(path, size):
        w = numpy_helper.from_array(np.arange(size, dtype=np.float32), "w")
        node = helper.make_node("Add", ["x", "w"], ["y"])
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])], [w])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    big = graph(tmp_path / "big.onnx", 1024)
    assert move_to_external_data(big) == tmp_path / "big.onnx.data" and (tmp_path / "big.onnx.data").stat().st_size == 4096
    y = ort.InferenceSession(str(big), providers=["CPUExecutionProvider"]).run(None, {"x": np.ones(1024, np.float32)})[0]
    np.testing.assert_array_equal(y, np.arange(1024, dtype=np.float32) + 1)
    small = graph(tmp_path / "small.onnx", 16)
    assert move_to_external_data(small) is None and not (tmp_path / "small.onnx.data").exists()
