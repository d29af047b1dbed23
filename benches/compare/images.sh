#!/usr/bin/env bash
# Image variants per second on one 12 MP photo: Tessera (benches/images.rs, criterion medians)
# side by side with ImageMagick's `convert -thumbnail` (Debian's imagemagick, called by its
# real path: /usr/local/bin/convert on the dev machines is not ImageMagick).
#
# The photo: tests/images/branches.jpg (a real 600x400 photo, see tests/images/README.md)
# upscaled to 4000x3000 (12 MP) by ImageMagick and written as JPEG quality 90.
#
# Usage: benches/compare/images.sh [RUNS]   (RUNS of each convert command, default 15)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-15}

IM=""
for c in /usr/bin/convert-im6.q16 /usr/bin/convert-im7.q16 /usr/bin/magick; do
    if [ -x "$c" ] && "$c" -version 2>/dev/null | grep -q ImageMagick; then IM=$c; break; fi
done
if [ -z "$IM" ]; then
    echo "error: Debian's ImageMagick is missing (apt-get install -y imagemagick);" \
         "/usr/local/bin/convert is not ImageMagick" >&2
    exit 1
fi
"$IM" -version | head -1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PHOTO=$WORK/photo-12mp.jpg
"$IM" tests/images/branches.jpg -resize '4000x3000!' -quality 90 "$PHOTO"
echo "photo: $("$IM" identify -format '%wx%h %b' "$PHOTO" 2>/dev/null || identify -format '%wx%h %b' "$PHOTO")"

# Median wall time of RUNS runs of a command, in seconds.
median() {
    local times=()
    for _ in $(seq "$RUNS"); do
        local t0 t1
        t0=$(date +%s.%N)
        "$@" >/dev/null
        t1=$(date +%s.%N)
        times+=("$(echo "$t1 - $t0" | bc -l)")
    done
    printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

echo
echo "ImageMagick, one decode + one thumbnail per run (median of $RUNS):"
IM_150=$(median "$IM" "$PHOTO" -thumbnail 150x150 -quality 80 "$WORK/s.webp")
IM_600=$(median "$IM" "$PHOTO" -thumbnail 600x600 -quality 80 "$WORK/l.webp")
IM_3=$(median "$IM" "$PHOTO" -thumbnail 600x600 -quality 80 -write "$WORK/l.webp" \
    -thumbnail 300x300 -write "$WORK/m.webp" -thumbnail 150x150 "$WORK/s.webp")
printf '  -thumbnail 150x150 → webp:        %.3f s  = %.2f variants/s\n' "$IM_150" "$(echo "1/$IM_150" | bc -l)"
printf '  -thumbnail 600x600 → webp:        %.3f s  = %.2f variants/s\n' "$IM_600" "$(echo "1/$IM_600" | bc -l)"
printf '  600, 300, 150 in one command:     %.3f s  = %.2f variants/s\n' "$IM_3" "$(echo "3/$IM_3" | bc -l)"

echo
echo "Tessera (criterion, release build; decode with limits + orientation + EXIF each iteration):"
TESSERA_BENCH_IMAGE=$PHOTO cargo bench --bench images -- --noplot >"$WORK/bench.log" 2>&1 \
    || { cat "$WORK/bench.log"; exit 1; }
for id in thumbnail_150 thumbnails all_five; do
    est=target/criterion/variants_12mp/$id/new/estimates.json
    secs=$(python3 -c "import json;print(json.load(open('$est'))['median']['point_estimate']/1e9)")
    n=1; [ $id = thumbnails ] && n=3; [ $id = all_five ] && n=5
    printf '  %-14s (%d variant%s): %.3f s  = %.2f variants/s\n' "$id" "$n" "$([ $n = 1 ] || echo s)" \
        "$secs" "$(echo "$n/$secs" | bc -l)"
done
