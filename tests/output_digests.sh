#!/usr/bin/env bash
# Byte-identical outputs across refactors: runs a fixed list of commands over
# the shipped fixtures and compares the SHA-256 of every file they write with
# tests/output_digests.txt.
#
#   bash tests/output_digests.sh            check (exit 1 on any difference)
#   bash tests/output_digests.sh --record   rewrite tests/output_digests.txt
#
# QRESIDUAL_BIN names the binary (default: target/release/qresidual, built
# if missing). An intended change of output is recorded with --record and
# named in the commit that makes it.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
record=0
[[ "${1:-}" == "--record" ]] && record=1

bin="${QRESIDUAL_BIN:-$root/target/release/qresidual}"
if [[ -z "${QRESIDUAL_BIN:-}" ]]; then
    cargo build --release --quiet --bin qresidual
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

F=fixtures
q() { "$bin" "$@" --quiet >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; echo "failed: qresidual $*" >&2; exit 1; }; }
qn() { "$bin" "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; echo "failed: qresidual $*" >&2; exit 1; }; }

cd "$work"
# Fixture paths stay relative (reports and imatrix metadata name them), so
# every checkout gives the same bytes.
ln -s "$root/fixtures" fixtures
base="$F/tiny/base-q4_k_m.gguf"
res="$F/tiny/residual-f16.safetensors"

# apply: every strategy, type family and budget on the tiny GGUF.
q apply --base "$base" --residual "$res" -o apply-auto.gguf --report apply-auto.json
q apply --base "$base" --residual "$res" -o apply-fresh.gguf --strategy fresh --report apply-fresh.json
q apply --base "$base" --residual "$res" -o apply-search.gguf --strategy search --report apply-search.json
q apply --base "$base" --residual "$res" -o apply-adapter.gguf --strategy adapter --rank 4 --report apply-adapter.json
for t in f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_K q3_K q4_K q5_K q6_K iq4_nl iq4_xs mxfp4 q4_k_m q5_k_s q3_k_l q2_k q3_k_m mxfp4_moe; do
    q apply --base "$base" --residual "$res" -o "apply-type-$t.gguf" --type "$t"
done
q apply --base "$base" --residual "$res" -o apply-maxsize.gguf --max-size +10% --report apply-maxsize.json
q apply --base "$base" --residual "$res" -o apply-bpw.gguf --bpw 6
q apply --base "$base" --residual "$res" -o apply-minret.gguf --min-retention 0.5
q apply --base "$base" --residual "$res" -o apply-imatrix.gguf --strategy fresh --imatrix "$F/imatrix/tiny.gguf"
q apply --base "$base" --residual "$res" -o apply-imatrix-auto.gguf --imatrix "$F/imatrix/tiny.dat"
q apply --base "$base" --residual "$res" -o apply-scale.gguf --scale 0.5 --strategy fresh
q apply --base "$base" --residual "$F/tiny/residual-sharded" -o apply-sharded.gguf --strategy fresh
q apply --base "$base" --residual "$F/tiny/residual-gguf-names.safetensors" -o apply-gguf-names.gguf
q apply --base "$base" --residual "$res" -o apply-split.gguf --strategy fresh --split-max-size 300K
q apply --base "$base" --residual "$res" -o apply-meta.gguf --name tiny-instruct --set general.author=str:qresidual

# dequantize / quantize (plain types and llama.cpp mixes).
q dequantize "$base" -o deq-f32.gguf
q dequantize "$base" -o deq-f16.gguf --type f16
q dequantize "$base" -o deq-bf16.gguf --type bf16
for t in q4_k_m q5_k_m q3_k_m q2_k q6_k q8_0 iq4_xs q4_0; do
    q quantize deq-f32.gguf -o "quant-$t.gguf" --type "$t" --report "quant-$t.json"
done
q quantize deq-f32.gguf -o quant-imatrix.gguf --type q4_k_m --imatrix "$F/imatrix/tiny.gguf"
q quantize deq-f32.gguf -o quant-split.gguf --type q8_0 --split-max-size 400K

# extract from HF pairs and GGUF pairs; compare; inspect; metadata.
q extract --instruct "$F/pair/hf-instruct" --base "$F/pair/hf-base" -o extract-hf.safetensors
q extract --instruct apply-type-f32.gguf --base "$base" -o extract-gguf.safetensors
q extract --instruct "$F/pair/hf-instruct" --base "$F/pair/base-q4_k_m.gguf" -o extract-mixed.safetensors
q extract --instruct "$F/pair/hf-instruct" --base "$F/pair/hf-base" -o extract-bf16.safetensors --dtype bf16
q compare "$base" apply-fresh.gguf --json compare-gguf.json
q compare "$F/pair/hf-instruct" "$F/pair/base-q4_k_m.gguf" --json compare-mixed.json
"$bin" inspect "$base" --json >inspect-gguf.json
"$bin" inspect "$res" --json >inspect-st.json
qn metadata "$base" -o metadata.gguf --set general.name=str:renamed --remove general.quantization_version

# bitsandbytes folders: a residual in HF names made from two of them.
q dequantize "$F/tiny_bnb/nf4" -o bnb-nf4-f16 --type f16
q dequantize "$F/tiny_bnb/int8" -o bnb-int8-f16 --type f16
q extract --instruct bnb-int8-f16 --base bnb-nf4-f16 -o bnb-res.safetensors
for v in nf4 fp4 int8; do
    q apply --base "$F/tiny_bnb/$v" --residual bnb-res.safetensors -o "bnb-$v-keep" --report "bnb-$v-keep.json"
done
for v in nf4 fp4; do
    q apply --base "$F/tiny_bnb/$v" --residual bnb-res.safetensors -o "bnb-$v-search" --strategy search --report "bnb-$v-search.json"
done
for t in nf4 fp4 int8 f16 bf16 f32; do
    q apply --base "$F/tiny_bnb/nf4" --residual bnb-res.safetensors -o "bnb-nf4-to-$t" --type "$t"
done

# Reports carry paths of this run's temporary folder; digest them with the
# folder's name taken out.
find . -name '*.json' -type f -exec sed -i "s#$work#WORK#g" {} +

find . -type f ! -name last.err ! -name digests.txt ! -path './fixtures/*' | LC_ALL=C sort | xargs sha256sum >"$work/digests.txt"
expected="$root/tests/output_digests.txt"
if [[ $record == 1 ]]; then
    cp "$work/digests.txt" "$expected"
    echo "recorded $(wc -l <"$expected") digests in tests/output_digests.txt"
    exit 0
fi
if diff -u "$expected" "$work/digests.txt"; then
    echo "output digests: $(wc -l <"$expected") files byte-identical"
else
    echo "output digests differ from tests/output_digests.txt (see the diff above)" >&2
    exit 1
fi
