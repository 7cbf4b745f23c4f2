#include <string.h>
#include <png.h>

/* libpng's simplified API behind one call: any PNG in memory (palette, grey, 16-bit, interlaced …)
   to 8-bit straight-alpha RGBA. Returns 0 on success, else libpng's message in `message`. */
static inline int score_png_decode_rgba(const void *data, size_t size, unsigned char *out, size_t capacity,
                                        unsigned *width, unsigned *height, char message[64]) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    message[0] = 0;
    if (!png_image_begin_read_from_memory(&image, data, size)) {
        strncpy(message, image.message, 63); message[63] = 0;
        return 1;
    }
    image.format = PNG_FORMAT_RGBA;
    *width = image.width;
    *height = image.height;
    if (out == NULL || capacity < PNG_IMAGE_SIZE(image)) {
        png_image_free(&image);
        return 2;  /* size query: width/height are set */
    }
    if (!png_image_finish_read(&image, NULL, out, 0, NULL)) {
        strncpy(message, image.message, 63); message[63] = 0;
        png_image_free(&image);
        return 1;
    }
    return 0;
}
