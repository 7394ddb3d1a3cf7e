/* A stand-in for the NVIDIA driver's libnvidia-ml.so.1, for tests on machines without a GPU.
 *
 * It answers the calls veil.tee.nvml makes with real H100 evidence read from files (the
 * vectors of ../shared/vectors, section 9.3): FAKE_NVML_REPORT (the SPDM report, hex) and
 * FAKE_NVML_CHAIN (the PEM certificate chain). Like the hardware it stands for, it cannot
 * sign the caller's nonce, so its report carries the nonce it was made with; the nonce it
 * was asked for is appended, hex, to FAKE_NVML_NONCES if set. FAKE_NVML_COUNT sets the
 * number of GPUs (default 1); FAKE_NVML_FAIL names a call that fails (NOT_SUPPORTED);
 * FAKE_NVML_REPORT_SIZE overrides the report size it states.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_UNKNOWN 999

typedef struct {
    unsigned int isCecAttestationReportPresent;
    unsigned int attestationReportSize;
    unsigned int cecAttestationReportSize;
    unsigned char nonce[0x20];
    unsigned char attestationReport[0x2000];
    unsigned char cecAttestationReport[0x1000];
} report_t;

typedef struct {
    unsigned int certChainSize;
    unsigned int attestationCertChainSize;
    unsigned char certChain[0x1000];
    unsigned char attestationCertChain[0x1400];
} certificate_t;

static int failing(const char *name) {
    const char *fail = getenv("FAKE_NVML_FAIL");
    return fail != NULL && strcmp(fail, name) == 0;
}

static long read_file(const char *variable, unsigned char *buffer, long size) {
    const char *path = getenv(variable);
    FILE *file = path ? fopen(path, "rb") : NULL;
    if (file == NULL) return -1;
    long length = (long)fread(buffer, 1, (size_t)size, file);
    fclose(file);
    return length;
}

static int hex_value(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

const char *nvmlErrorString(nvmlReturn_t code) {
    return code == NVML_ERROR_NOT_SUPPORTED ? "Not Supported" : "Unknown Error";
}

nvmlReturn_t nvmlInit_v2(void) { return failing("nvmlInit_v2") ? NVML_ERROR_NOT_SUPPORTED : NVML_SUCCESS; }

nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    const char *text = getenv("FAKE_NVML_COUNT");
    *count = text ? (unsigned int)atoi(text) : 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    *device = (nvmlDevice_t)(unsigned long)(0x1000 + index);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuAttestationReport(nvmlDevice_t device, report_t *report) {
    (void)device;
    if (failing("nvmlDeviceGetConfComputeGpuAttestationReport")) return NVML_ERROR_NOT_SUPPORTED;
    const char *record = getenv("FAKE_NVML_NONCES");
    if (record != NULL) {
        FILE *out = fopen(record, "a");
        if (out == NULL) return NVML_ERROR_UNKNOWN;
        for (int i = 0; i < 0x20; i++) fprintf(out, "%02x", report->nonce[i]);
        fprintf(out, "\n");
        fclose(out);
    }
    static unsigned char hex[0x4000 + 2];
    long length = read_file("FAKE_NVML_REPORT", hex, sizeof hex);
    if (length < 0) return NVML_ERROR_UNKNOWN;
    unsigned int size = 0;
    for (long i = 0; i + 1 < length && size < sizeof report->attestationReport; i += 2) {
        int high = hex_value(hex[i]), low = hex_value(hex[i + 1]);
        if (high < 0 || low < 0) break;
        report->attestationReport[size++] = (unsigned char)(high << 4 | low);
    }
    const char *stated = getenv("FAKE_NVML_REPORT_SIZE");
    report->attestationReportSize = stated ? (unsigned int)atoi(stated) : size;
    report->isCecAttestationReportPresent = 0;
    report->cecAttestationReportSize = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuCertificate(nvmlDevice_t device, certificate_t *certificate) {
    (void)device;
    if (failing("nvmlDeviceGetConfComputeGpuCertificate")) return NVML_ERROR_NOT_SUPPORTED;
    long length = read_file("FAKE_NVML_CHAIN", certificate->attestationCertChain,
                            sizeof certificate->attestationCertChain);
    if (length < 0) return NVML_ERROR_UNKNOWN;
    certificate->attestationCertChainSize = (unsigned int)length;
    certificate->certChainSize = 0;
    return NVML_SUCCESS;
}
