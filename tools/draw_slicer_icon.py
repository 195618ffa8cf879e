"""Draw the SegVolSlicer icon (128x128 PNG): an axial CT slice with a segmented organ, a box and two clicks.

Run once by hand: `python tools/draw_slicer_icon.py` writes SegVolSlicer/Resources/Icons/SegVolSlicer.png and the
copy at the repository root that the extension catalogue links to (EXTENSION_ICONURL).
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE, SCALE = 128, 8  # drawn 8x larger, then downsampled: smooth edges without an antialiasing renderer
ROOT = Path(__file__).resolve().parents[1]


def draw() -> Image.Image:
    s = SIZE * SCALE
    image = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)

    def box(x0, y0, x1, y1):
        return [x0 * SCALE, y0 * SCALE, x1 * SCALE, y1 * SCALE]

    pen.rounded_rectangle(box(2, 2, 126, 126), radius=22 * SCALE, fill=(24, 32, 48, 255))
    pen.ellipse(box(12, 26, 116, 104), fill=(92, 96, 104, 255))  # body outline
    pen.ellipse(box(18, 31, 110, 99), fill=(58, 61, 68, 255))  # soft tissue
    pen.ellipse(box(56, 80, 72, 96), fill=(236, 232, 220, 255))  # vertebral body
    pen.ellipse(box(26, 40, 66, 80), fill=(221, 130, 101, 255))  # liver (Slicer's liver colour)
    pen.ellipse(box(80, 48, 100, 70), fill=(157, 108, 162, 255))  # spleen
    pen.rectangle(box(21, 35, 71, 85), outline=(255, 214, 10, 255), width=3 * SCALE)  # box prompt
    pen.ellipse(box(38, 52, 50, 64), fill=(40, 200, 80, 255), outline=(255, 255, 255, 255), width=2 * SCALE)
    pen.ellipse(box(84, 80, 96, 92), fill=(230, 50, 50, 255), outline=(255, 255, 255, 255), width=2 * SCALE)
    image = image.filter(ImageFilter.GaussianBlur(SCALE / 4))
    return image.resize((SIZE, SIZE), Image.LANCZOS)


if __name__ == "__main__":
    icon = draw()
    for path in (ROOT / "SegVolSlicer" / "Resources" / "Icons" / "SegVolSlicer.png", ROOT / "SegVolSlicer.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path, optimize=True)
        print(path)
