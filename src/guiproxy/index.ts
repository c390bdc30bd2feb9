/** The host-side GUI proxy: browser connections as qrexec calls into the GUI domain. */
export { GuiProxy, GuiProxyError, dom0Call, fetchToken, policySocketDecider, HTTP_SERVICE, TOKEN_SERVICE, type Dom0CallOptions, type GuiProxyOptions } from './proxy.js';
