#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_COLOR_H

/* Macros Swift cannot import as typed constants. */
static const FT_Int32 score_ft_load_color_render = FT_LOAD_COLOR | FT_LOAD_RENDER;
