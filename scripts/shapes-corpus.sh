# shellcheck shell=bash
# Sourced by the benchmarks that train on the synthetic shapes corpus (bench-learning,
# bench-ddp): ingest_shapes generates it, serves it over HTTP and ingests it as datasets
# bench-shapes (TRAIN_N pictures) and bench-shapes-heldout (HELDOUT), once per WORK folder.
# Reads BIN, WORK, TRAIN_N, HELDOUT, PAIR_SHARE, OBJECT_SCALE and IMAGE_SIZE (pixels, default
# 96); ALBEF_HOME holds the registry.
ingest_shapes() {
    if [ -f "$WORK/ingested" ]; then
        echo "reusing the corpus in $WORK ($(cat "$WORK/ingested"))" >&2
        return
    fi
    "$BIN" corpus generate --out "$WORK/corpus" --n $((TRAIN_N + HELDOUT)) --heldout "$HELDOUT" \
        --pair-share "$PAIR_SHARE" --object-scale "$OBJECT_SCALE" --image-size "${IMAGE_SIZE:-96}" --seed 7 >&2
    "$BIN" corpus serve "$WORK/corpus" > "$WORK/serve.log" 2>&1 &
    SHAPES_SERVER=$!
    trap 'kill "$SHAPES_SERVER" 2>/dev/null || true' EXIT
    for _ in $(seq 1 50); do
        grep -q '^http://' "$WORK/serve.log" && break
        sleep 0.2
    done
    # The corpus has no copies (no --dup-frac) and its held-out pictures show distinct scenes:
    # exact dedupe only, so that every picture stays (at distance 4, pHash takes a few percent
    # of these plain shape pictures for copies of each other).
    "$BIN" ingest --input "$WORK/corpus/urls.tsv" --output "$WORK/data/train" \
        --dataset bench-shapes --shard-size 2000 --image-size "${IMAGE_SIZE:-96}" --phash-distance=-1 >&2
    "$BIN" ingest --input "$WORK/corpus/heldout.tsv" --output "$WORK/data/heldout" \
        --dataset bench-shapes-heldout --shard-size 2000 --image-size "${IMAGE_SIZE:-96}" --phash-distance=-1 >&2
    kill "$SHAPES_SERVER" 2>/dev/null || true
    echo "train_n=$TRAIN_N pair_share=$PAIR_SHARE object_scale=$OBJECT_SCALE" > "$WORK/ingested"
}
