// Image files for the example: JPEG (libjpeg) and PNG (libpng) in, PNG out. Errors throw std::runtime_error
// naming the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pfcn_example {

struct Image {
    int height = 0;
    int width = 0;
    std::vector<uint8_t> rgb;  // height * width * 3, row-major
};

// Decode a JPEG or PNG file (chosen by its first bytes) to 8-bit RGB; grey is repeated, alpha dropped. A JPEG's
// EXIF orientation is applied, as pfcn-predict does (PIL's ImageOps.exif_transpose); a PNG's eXIf chunk is not read.
Image read_image(const std::string& path);

// Write 8-bit pixels (channels 1 = grey, 3 = RGB) as a PNG, through a temporary file renamed into place.
void write_png(const std::string& path, const uint8_t* pixels, int height, int width, int channels);

}  // namespace pfcn_example
