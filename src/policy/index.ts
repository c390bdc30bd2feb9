/**
 * The qrexec policy language: loading, evaluation, explanation. Pure: file
 * access goes through {@link PolicySource}; see src/policy-files/disk.ts
 * for the disk.
 */
export { PolicySyntaxError, EvaluationCrash } from './errors.js';
export { parseSystemInfo, isDom0, SystemInfoError, type SystemInfo, type DomainInfo } from './system-info.js';
export { parseToken, type Token, type TokenKind, type TokenContext } from './tokens.js';
export { type Rule, type Action, validateServiceAndArgument } from './rule.js';
export {
  loadRules,
  loadRulesFromFiles,
  memorySource,
  PolicyIoError,
  MAX_INCLUDE_DEPTH,
  LoadCache,
  type PolicySource,
  type DirEntry,
  type LoadOptions,
} from './loader.js';
export {
  Policy,
  answerAsk,
  refuseAsk,
  allowReplyLines,
  finalizeAllow,
  isRemoteTarget,
  type PolicyRequest,
  type ResolvedRequest,
  type Decision,
  type AllowDecision,
  type AskDecision,
  type DenyDecision,
} from './policy.js';
export { basename } from './paths.js';
export { decide, decisionToJson, parseRequestJson, ruleLabel, type DecisionJson } from './report.js';
export { lintPolicyText, formatDiagnostic, includePathProblem, type LintDiagnostic, type LintOptions } from './lint.js';
export { explain, explanationToJson, formatExplanation, type FormatOptions, type Explanation, type RuleMiss, type RuleColumn, type AskStep, type AskTrace } from './explain.js';
export { convertLegacy, isLegacyPolicyFile, LegacyConvertError, type LegacyConvertOptions, type LegacyConversion } from './legacy-convert.js';
export { policyGraph, validateGraphOptions, GraphOptionError, type GraphOptions } from './graph.js';
