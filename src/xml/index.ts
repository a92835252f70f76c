export { enableDomain, enableInterface, NO_RSS_NIC_WARNING, disableDomain, withoutWrapper, withRssOn, interfacesOf, rssNics, readConfig, isEnabled, domainFacts, describeChange } from './transform';
export type { EnableOptions, EnableResult, InterfaceResult, DisableResult, RssNic, Change } from './transform';
export { XML_NAMESPACE, DEFAULT_POLICY, POLICIES } from './config';
export type { XmlConfig, Policy, NicRecord, AttrRecord, MetadataOrigin } from './config';
export { runXmlCommand, DEFAULT_WRAPPER_DIR, wrapperInDir, report } from './cli';
export type { CommandResult } from './cli';
export { isVirtioModel } from './domain';
