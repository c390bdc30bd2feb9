/* request_server.c: qubesd's native request/reply server (see there). */
#ifndef QREXEC_REQUEST_SERVER_H
#define QREXEC_REQUEST_SERVER_H
#include <node_api.h>
/* Adds listenUnix and requestServer to exports; 0 on failure. */
int request_server_init(napi_env env, napi_value exports);
#endif
