#include "image_io.hpp"

#include <jpeglib.h>
#include <png.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>

#include <unistd.h>

namespace pfcn_example {
namespace {

using File = std::unique_ptr<FILE, int (*)(FILE*)>;

File open_file(const std::string& path, const char* mode) {
    File f(std::fopen(path.c_str(), mode), &std::fclose);
    if (!f) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
    return f;
}

// libjpeg reports errors through a callback; jump back out of the decoder instead of exiting the process.
struct JpegError {
    jpeg_error_mgr base;
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr info) {
    auto* err = reinterpret_cast<JpegError*>(info->err);
    (*info->err->format_message)(info, err->message);
    std::longjmp(err->jump, 1);
}

// The EXIF orientation of a JPEG (tag 0x0112 of IFD0 in its APP1 "Exif" segment): 1 to 8, or 1 when the tag is
// absent or unreadable, which is what PIL's ImageOps.exif_transpose (pfcn-predict's reader) does too.
int exif_orientation(const jpeg_decompress_struct& info) {
    for (jpeg_saved_marker_ptr m = info.marker_list; m != nullptr; m = m->next) {
        if (m->marker != JPEG_APP0 + 1 || m->data_length < 14 || std::memcmp(m->data, "Exif\0\0", 6) != 0) continue;
        const uint8_t* tiff = m->data + 6;  // byte order, 42, offset of IFD0; offsets count from here
        const size_t size = m->data_length - 6;
        const bool little = tiff[0] == 'I' && tiff[1] == 'I';
        if (!little && !(tiff[0] == 'M' && tiff[1] == 'M')) return 1;
        auto u16 = [&](size_t at) -> unsigned {
            return little ? tiff[at] | (tiff[at + 1] << 8) : (tiff[at] << 8) | tiff[at + 1];
        };
        auto u32 = [&](size_t at) -> size_t { return little ? u16(at) | (size_t{u16(at + 2)} << 16)
                                                            : (size_t{u16(at)} << 16) | u16(at + 2); };
        if (u16(2) != 42) return 1;
        const size_t ifd = u32(4);
        if (ifd + 2 > size) return 1;
        const unsigned entries = u16(ifd);
        for (unsigned i = 0; i < entries; ++i) {
            const size_t entry = ifd + 2 + 12 * size_t{i};  // tag, type, count, value (a SHORT sits first)
            if (entry + 12 > size) return 1;
            if (u16(entry) == 0x0112 && u16(entry + 2) == 3) {
                const unsigned value = u16(entry + 8);
                return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
            }
        }
        return 1;
    }
    return 1;
}

// The pixels turned upright as the orientation says (the 8 EXIF cases: mirrors, rotations, transpositions).
Image apply_orientation(Image in, int orientation) {
    if (orientation <= 1 || orientation > 8) return in;
    const int h = in.height, w = in.width;
    Image out;
    out.height = orientation >= 5 ? w : h;  // 5-8 swap the axes
    out.width = orientation >= 5 ? h : w;
    out.rgb.resize(in.rgb.size());
    for (int y = 0; y < out.height; ++y) {
        for (int x = 0; x < out.width; ++x) {
            int sy = y, sx = x;  // the source pixel of output (y, x)
            switch (orientation) {
                case 2: sx = w - 1 - x; break;                   // mirrored
                case 3: sy = h - 1 - y; sx = w - 1 - x; break;   // upside down
                case 4: sy = h - 1 - y; break;                   // flipped
                case 5: sy = x; sx = y; break;                   // transposed
                case 6: sy = h - 1 - x; sx = y; break;           // rotated 90 clockwise
                case 7: sy = h - 1 - x; sx = w - 1 - y; break;   // transversed
                default: sy = x; sx = w - 1 - y; break;          // 8: rotated 90 anticlockwise
            }
            std::memcpy(&out.rgb[(static_cast<size_t>(y) * out.width + x) * 3],
                        &in.rgb[(static_cast<size_t>(sy) * w + sx) * 3], 3);
        }
    }
    return out;
}

Image read_jpeg(const std::string& path, FILE* file) {
    jpeg_decompress_struct info{};
    JpegError err{};
    info.err = jpeg_std_error(&err.base);
    err.base.error_exit = jpeg_error_exit;
    Image img;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&info);
        throw std::runtime_error(path + ": cannot decode JPEG (" + err.message + ")");
    }
    jpeg_create_decompress(&info);
    jpeg_stdio_src(&info, file);
    jpeg_save_markers(&info, JPEG_APP0 + 1, 0xFFFF);  // keep APP1 for the EXIF orientation
    jpeg_read_header(&info, TRUE);
    const int orientation = exif_orientation(info);
    info.out_color_space = JCS_RGB;  // libjpeg converts grey and YCbCr; CMYK is refused below
    if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&info);
        throw std::runtime_error(path + ": CMYK JPEGs are not supported; convert it to RGB");
    }
    jpeg_start_decompress(&info);
    img.height = static_cast<int>(info.output_height);
    img.width = static_cast<int>(info.output_width);
    img.rgb.resize(static_cast<size_t>(img.height) * img.width * 3);
    while (info.output_scanline < info.output_height) {
        JSAMPROW row = img.rgb.data() + static_cast<size_t>(info.output_scanline) * img.width * 3;
        jpeg_read_scanlines(&info, &row, 1);
    }
    jpeg_finish_decompress(&info);
    jpeg_destroy_decompress(&info);
    return apply_orientation(std::move(img), orientation);
}

Image read_png(const std::string& path, FILE* file) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!info) {
        png_destroy_read_struct(&png, nullptr, nullptr);
        throw std::runtime_error(path + ": out of memory reading PNG");
    }
    Image img;
    std::vector<png_bytep> rows;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, nullptr);
        throw std::runtime_error(path + ": cannot decode PNG");
    }
    png_init_io(png, file);
    png_read_info(png, info);
    // normalise every PNG to 8-bit RGB: palette -> RGB, grey -> RGB, 16 -> 8 bits, alpha dropped
    png_set_expand(png);
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
    png_read_update_info(png, info);
    img.height = static_cast<int>(png_get_image_height(png, info));
    img.width = static_cast<int>(png_get_image_width(png, info));
    img.rgb.resize(static_cast<size_t>(img.height) * img.width * 3);
    rows.resize(img.height);
    for (int y = 0; y < img.height; ++y) rows[y] = img.rgb.data() + static_cast<size_t>(y) * img.width * 3;
    png_read_image(png, rows.data());
    png_read_end(png, nullptr);
    png_destroy_read_struct(&png, &info, nullptr);
    return img;
}

}  // namespace

Image read_image(const std::string& path) {
    File f = open_file(path, "rb");
    unsigned char magic[8] = {0};
    size_t n = std::fread(magic, 1, sizeof magic, f.get());
    std::rewind(f.get());
    if (n >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) return read_jpeg(path, f.get());
    if (n == 8 && png_sig_cmp(magic, 0, 8) == 0) return read_png(path, f.get());
    throw std::runtime_error(path + ": not a JPEG or PNG file (unrecognised first bytes)");
}

void write_png(const std::string& path, const uint8_t* pixels, int height, int width, int channels) {
    const std::string tmp = path + ".tmp" + std::to_string(getpid());
    {
        File f = open_file(tmp, "wb");
        png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
        png_infop info = png ? png_create_info_struct(png) : nullptr;
        if (!info) {
            png_destroy_write_struct(&png, nullptr);
            throw std::runtime_error(path + ": out of memory writing PNG");
        }
        if (setjmp(png_jmpbuf(png))) {
            png_destroy_write_struct(&png, &info);
            std::remove(tmp.c_str());
            throw std::runtime_error(path + ": cannot write PNG");
        }
        png_init_io(png, f.get());
        png_set_IHDR(png, info, width, height, 8, channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY,
                     PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_write_info(png, info);
        for (int y = 0; y < height; ++y)
            png_write_row(png, const_cast<png_bytep>(pixels + static_cast<size_t>(y) * width * channels));
        png_write_end(png, nullptr);
        png_destroy_write_struct(&png, &info);
        if (std::fflush(f.get()) != 0) throw std::runtime_error(path + ": write failed");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw std::runtime_error(path + ": cannot move the written file into place");
    }
}

}  // namespace pfcn_example
