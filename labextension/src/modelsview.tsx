/**
 * The Models section: registered models, their versions with aliases and
 * tags, and the actions that set, move or remove them.
 */

import { Dialog, InputDialog, showDialog } from '@jupyterlab/apputils';
import React from 'react';

import { confirmAction, notifyError, notifySuccess } from './dialogs';
import { formatTimestamp } from './format';
import { TrainingModel } from './model';
import { useResource } from './resourcesview';
import { TagForm } from './tagform';
import type { IModelVersion, IRegisteredModel } from './wire';

/**
 * Props of the `ModelsSection`.
 */
export interface IModelsSectionProps {
  /**
   * The panel's model.
   */
  model: TrainingModel;
}

/**
 * The collapsible Models section.
 */
export function ModelsSection(props: IModelsSectionProps): JSX.Element {
  const { model } = props;
  const list = useResource(model.models);
  const models = list?.models ?? [];
  return (
    <details className="tml-Section tml-ModelsSection" open>
      <summary className="tml-SectionTitle">
        Models{list ? ` (${models.length})` : ''}
      </summary>
      {list === null ? (
        <p className="tml-Empty">No registry loaded yet.</p>
      ) : models.length === 0 ? (
        <p className="tml-Empty">No registered model yet.</p>
      ) : (
        <ul className="tml-ModelList" aria-label="Registered models">
          {models.map(registered => (
            <ModelView
              key={registered.name}
              registered={registered}
              model={model}
            />
          ))}
        </ul>
      )}
    </details>
  );
}

/**
 * Props of one registered model.
 */
interface IModelViewProps {
  registered: IRegisteredModel;
  model: TrainingModel;
}

function ModelView(props: IModelViewProps): JSX.Element {
  const { registered, model } = props;
  return (
    <li className="tml-Model" data-model={registered.name}>
      <div className="tml-ModelName">{registered.name}</div>
      {registered.versions.length === 0 ? (
        <div className="tml-Muted">No version.</div>
      ) : (
        <ul className="tml-VersionList">
          {registered.versions.map(version => (
            <VersionView
              key={version.version}
              registered={registered}
              version={version}
              model={model}
            />
          ))}
        </ul>
      )}
    </li>
  );
}

/**
 * Props of one model version.
 */
interface IVersionViewProps {
  registered: IRegisteredModel;
  version: IModelVersion;
  model: TrainingModel;
}

function VersionView(props: IVersionViewProps): JSX.Element {
  const { registered, version, model } = props;
  const name = registered.name;
  const label = `${name} version ${version.version}`;

  const onSetAlias = async (): Promise<void> => {
    const answer = await InputDialog.getText({
      title: `Set an alias on ${label}`,
      label: 'Alias (letters, digits, _ and -)',
      placeholder: 'champion',
      okLabel: 'Next'
    });
    const alias = answer.value?.trim();
    if (!answer.button.accept || !alias) {
      return;
    }
    const current = registered.aliases[alias];
    if (current === version.version) {
      notifySuccess(`Alias ${alias} already points at ${label}.`);
      return;
    }
    const accepted = await confirmAction(
      current ? 'Move alias?' : 'Set alias?',
      current
        ? `Move alias "${alias}" of ${name} from version ${current} to version ${version.version}?`
        : `Point alias "${alias}" of ${name} at version ${version.version}?`,
      current ? 'Move alias' : 'Set alias'
    );
    if (!accepted) {
      return;
    }
    try {
      await model.setAlias(name, alias, version.version);
      notifySuccess(`Alias ${alias} now points at ${label}.`);
    } catch (error) {
      notifyError(`Set alias ${alias} on ${label}`, error);
    }
  };

  const onRemoveAlias = async (alias: string): Promise<void> => {
    const accepted = await confirmAction(
      'Remove alias?',
      `Remove alias "${alias}" from ${label}? Code that loads models:/${name}@${alias} will stop working.`,
      'Remove alias',
      true
    );
    if (!accepted) {
      return;
    }
    try {
      await model.removeAlias(name, alias);
      notifySuccess(`Removed alias ${alias} of ${name}.`);
    } catch (error) {
      notifyError(`Remove alias ${alias} of ${name}`, error);
    }
  };

  const onAddTag = async (): Promise<void> => {
    const form = new TagForm();
    const result = await showDialog({
      title: `Add a tag to ${label}`,
      body: form,
      focusNodeSelector: 'input',
      buttons: [
        Dialog.cancelButton({ label: 'Cancel' }),
        Dialog.okButton({ label: 'Add tag' })
      ]
    });
    const tag = result.value;
    if (!result.button.accept || !tag || !tag.key) {
      return;
    }
    try {
      await model.setTag(name, version.version, tag.key, tag.value);
      notifySuccess(`Tagged ${label} with ${tag.key}=${tag.value}.`);
    } catch (error) {
      notifyError(`Add tag ${tag.key} to ${label}`, error);
    }
  };

  const onRemoveTag = async (key: string): Promise<void> => {
    const accepted = await confirmAction(
      'Remove tag?',
      `Remove tag "${key}" from ${label}?`,
      'Remove tag',
      true
    );
    if (!accepted) {
      return;
    }
    try {
      await model.removeTag(name, version.version, key);
      notifySuccess(`Removed tag ${key} from ${label}.`);
    } catch (error) {
      notifyError(`Remove tag ${key} from ${label}`, error);
    }
  };

  return (
    <li className="tml-Version" data-version={version.version}>
      <div className="tml-VersionHeader">
        <span className="tml-VersionNumber">v{version.version}</span>
        {version.status && version.status !== 'READY' && (
          <span className="tml-Muted">{version.status.toLowerCase()}</span>
        )}
        <span className="tml-Muted">
          {formatTimestamp(toSeconds(version.creation_timestamp))}
        </span>
      </div>
      <div className="tml-Chips" aria-label={`Aliases of ${label}`}>
        {version.aliases.map(alias => (
          <span
            className="tml-Chip tml-mod-alias"
            key={alias}
            data-alias={alias}
          >
            @{alias}
            <button
              className="tml-ChipRemove"
              aria-label={`Remove alias ${alias} from ${label}`}
              title="Remove alias"
              onClick={() => void onRemoveAlias(alias)}
            >
              ×
            </button>
          </span>
        ))}
        {Object.entries(version.tags).map(([key, value]) => (
          <span className="tml-Chip tml-mod-tag" key={key} data-tag={key}>
            {key}={value}
            <button
              className="tml-ChipRemove"
              aria-label={`Remove tag ${key} from ${label}`}
              title="Remove tag"
              onClick={() => void onRemoveTag(key)}
            >
              ×
            </button>
          </span>
        ))}
      </div>
      <div
        className="tml-Actions"
        role="group"
        aria-label={`Actions for ${label}`}
      >
        <button
          className="tml-Button"
          aria-label={`Set or move an alias to ${label}`}
          onClick={() => void onSetAlias()}
        >
          Set alias
        </button>
        <button
          className="tml-Button"
          aria-label={`Add a tag to ${label}`}
          onClick={() => void onAddTag()}
        >
          Add tag
        </button>
      </div>
    </li>
  );
}

/**
 * MLflow sends times in milliseconds; the rest of the API in seconds.
 */
function toSeconds(timestamp: number | null | undefined): number | null {
  if (typeof timestamp !== 'number') {
    return null;
  }
  return timestamp > 1e11 ? timestamp / 1000 : timestamp;
}
