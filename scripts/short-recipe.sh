# short-recipe.sh: sourced by bench-learning and bench-filter. `short_recipe_config OUT` writes
# the short from-scratch recipe, configs/albef-tiny-scratch.toml, to OUT (and prints its `amp`
# setting, true or false). Each setting named below and set in the environment replaces the
# file's value; unset ones keep it, so the defaults are the committed file's (the values in
# parentheses):
#
#   LR (peak, 1e-3)                     WARMUP (steps, 100)        MOMENTUM (0.99; albef-tiny 0.995)
#   ALPHA (0; albef-tiny 0.4)           QUEUE (256; albef-tiny 4096)
#   TEMP (temperature, 0.01; albef-tiny 0.07)  TEMP_LR_SCALE (0: TEMP fixed; albef-tiny 1: learned)
#   VISION_LR (the image encoder's lr / lr, 0.3; albef-tiny 1)
#   IMAGE_RES (48: a 3x3 patch grid, one patch per named place; albef-tiny 96)
#   PATCH (16)                          POS_EMBED (normal or sincos; normal)
#   DROPOUT (BERT's, 0; albef-tiny 0.1) MLM_PROB (0.15)
#   CROP_MIN (smallest RandomResizedCrop share, 1.0: no crops)   RANDAUG (ops, 0: off)
#   AMP (1: bf16 matmuls, on CUDA and on CPUs with avx512_bf16 or amx_bf16; 0: off, the default)
#   TEXT_INIT (a BERT safetensors file, e.g. assets/model.safetensors: MiniLM-L6-H384's shapes,
#              its first 4 layers; default none, from scratch)
#
# Why these values: see the comments of configs/albef-tiny-scratch.toml, and docs/research-log.md
# for the experiments behind them.

# Sets `KEY = VALUE` in file $1 (a key the file holds once), keeping the line's comment.
_recipe_set() {
    local file="$1" key="$2" value="$3"
    sed -i -e "s/^${key} = [^#]*#/${key} = ${value}   #/;t" -e "s/^${key} = .*/${key} = ${value}/" "$file"
}

short_recipe_config() {
    local out="$1"
    cp "$ROOT/configs/albef-tiny-scratch.toml" "$out"
    [ -n "${LR:-}" ] && _recipe_set "$out" lr "$LR"
    [ -n "${WARMUP:-}" ] && _recipe_set "$out" warmup_steps "$WARMUP"
    if [ -n "${AMP:-}" ]; then
        if [ "$AMP" = 1 ]; then _recipe_set "$out" amp true; else _recipe_set "$out" amp false; fi
    fi
    [ -n "${QUEUE:-}" ] && _recipe_set "$out" queue_size "$QUEUE"
    [ -n "${MOMENTUM:-}" ] && _recipe_set "$out" momentum "$MOMENTUM"
    [ -n "${ALPHA:-}" ] && _recipe_set "$out" alpha "$ALPHA"
    [ -n "${MLM_PROB:-}" ] && _recipe_set "$out" mlm_probability "$MLM_PROB"
    if [ -n "${DROPOUT:-}" ]; then
        _recipe_set "$out" hidden_dropout "$DROPOUT"
        _recipe_set "$out" attention_dropout "$DROPOUT"
    fi
    [ -n "${IMAGE_RES:-}" ] && _recipe_set "$out" image_res "$IMAGE_RES"
    [ -n "${PATCH:-}" ] && _recipe_set "$out" patch_size "$PATCH"
    [ -n "${POS_EMBED:-}" ] && _recipe_set "$out" pos_embed_init "\"$POS_EMBED\""
    [ -n "${RANDAUG:-}" ] && _recipe_set "$out" randaugment_n "$RANDAUG"
    [ -n "${TEMP:-}" ] && _recipe_set "$out" temp "$TEMP"
    [ -n "${TEMP_LR_SCALE:-}" ] && _recipe_set "$out" temp_lr_scale "$TEMP_LR_SCALE"
    [ -n "${VISION_LR:-}" ] && _recipe_set "$out" vision_lr_scale "$VISION_LR"
    [ -n "${CROP_MIN:-}" ] && _recipe_set "$out" crop_scale "[$CROP_MIN, 1.0]"
    if [ -n "${TEXT_INIT:-}" ]; then
        sed -i -e '/^\[model.text\]/,/^\[train\]/{s/^hidden_size = [0-9]*/hidden_size = 384/;s/^heads = [0-9]*/heads = 12/;s/^intermediate_size = [0-9]*/intermediate_size = 1536/}' \
            -e "/^mask_token_id/a init = \"$(realpath "$TEXT_INIT")\"" "$out"
    fi
    sed -n 's/^amp = \(true\|false\).*/\1/p' "$out"
}
