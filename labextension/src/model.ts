/**
 * The sidebar's model: the polled jobs, resources and models, the status
 * filter, and the actions that change state on the server.
 */

import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './api';
import {
  mergeVersions,
  parseJobList,
  parseModelList,
  parseResources
} from './normalize';
import { ConnectionState, PolledResource } from './poller';
import { apiPath } from './url';
import type {
  IJobList,
  IJobRecord,
  IModelList,
  IResources,
  JobStatus
} from './wire';

/**
 * Options of a `TrainingModel`.
 */
export interface ITrainingModelOptions {
  /**
   * The server settings; JupyterLab's defaults when left out.
   */
  settings?: ServerConnection.ISettings;

  /**
   * Milliseconds between two polls of the job list.
   */
  jobsInterval?: number;

  /**
   * Milliseconds between two polls of the resources.
   */
  resourcesInterval?: number;

  /**
   * Milliseconds between two polls of the model registry.
   */
  modelsInterval?: number;
}

/**
 * The most jobs the panel asks for at once.
 */
const JOB_LIMIT = 100;

/**
 * The state behind the Training panel.
 */
export class TrainingModel {
  /**
   * Construct the model and start polling.
   */
  constructor(options: ITrainingModelOptions = {}) {
    this._settings = options.settings ?? ServerConnection.makeSettings();
    this.jobs = new PolledResource<IJobList>({
      path: 'jobs',
      query: () => ({
        status: this._statusFilter ?? undefined,
        limit: JOB_LIMIT
      }),
      parse: parseJobList,
      interval: options.jobsInterval ?? 1000,
      settings: this._settings
    });
    this.resources = new PolledResource<IResources>({
      path: 'resources',
      parse: parseResources,
      interval: options.resourcesInterval ?? 3000,
      settings: this._settings
    });
    this.models = new PolledResource<IModelList>({
      path: 'models',
      parse: parseModelList,
      expand: loadVersions,
      interval: options.modelsInterval ?? 10000,
      settings: this._settings
    });
    for (const resource of [this.jobs, this.resources, this.models]) {
      resource.changed.connect(this._emitChanged, this);
      resource.stateChanged.connect(this._emitChanged, this);
    }
  }

  /**
   * The job list.
   */
  readonly jobs: PolledResource<IJobList>;

  /**
   * The resource inventory.
   */
  readonly resources: PolledResource<IResources>;

  /**
   * The model registry.
   */
  readonly models: PolledResource<IModelList>;

  /**
   * The server settings used for every request.
   */
  get settings(): ServerConnection.ISettings {
    return this._settings;
  }

  /**
   * The connection state of the panel as a whole: the job list decides,
   * because it is what the panel is mostly about.
   */
  get state(): ConnectionState {
    return this.jobs.state;
  }

  /**
   * The status the job list is filtered by, or `null` for all.
   */
  get statusFilter(): JobStatus | null {
    return this._statusFilter;
  }
  set statusFilter(status: JobStatus | null) {
    if (status === this._statusFilter) {
      return;
    }
    this._statusFilter = status;
    this._emitChanged();
    void this.jobs.refresh({ force: true });
  }

  /**
   * Emitted when anything the panel shows has changed.
   */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /**
   * Cancel a job.
   */
  async cancelJob(jobId: string): Promise<IJobRecord> {
    const record = await requestAPI<IJobRecord>(
      `jobs/${apiPath(jobId)}/cancel`,
      { method: 'POST', body: {}, settings: this._settings }
    );
    void this.jobs.refresh();
    return record;
  }

  /**
   * Point an alias of a registered model at a version (set or move).
   */
  async setAlias(model: string, alias: string, version: string): Promise<void> {
    await requestAPI(`models/${apiPath(model)}/aliases/${apiPath(alias)}`, {
      method: 'PUT',
      body: { version },
      settings: this._settings
    });
    await this.models.refresh({ force: true });
  }

  /**
   * Remove an alias of a registered model.
   */
  async removeAlias(model: string, alias: string): Promise<void> {
    await requestAPI(`models/${apiPath(model)}/aliases/${apiPath(alias)}`, {
      method: 'DELETE',
      settings: this._settings
    });
    await this.models.refresh({ force: true });
  }

  /**
   * Set a tag on a model version.
   */
  async setTag(
    model: string,
    version: string,
    key: string,
    value: string
  ): Promise<void> {
    await requestAPI(
      `models/${apiPath(model)}/versions/${apiPath(version)}/tags/${apiPath(key)}`,
      { method: 'PUT', body: { value }, settings: this._settings }
    );
    await this.models.refresh({ force: true });
  }

  /**
   * Remove a tag from a model version.
   */
  async removeTag(model: string, version: string, key: string): Promise<void> {
    await requestAPI(
      `models/${apiPath(model)}/versions/${apiPath(version)}/tags/${apiPath(key)}`,
      { method: 'DELETE', settings: this._settings }
    );
    await this.models.refresh({ force: true });
  }

  /**
   * Ask the server again for everything now.
   */
  async refresh(): Promise<void> {
    await Promise.all([
      this.jobs.refresh({ force: true }),
      this.resources.refresh({ force: true }),
      this.models.refresh({ force: true })
    ]);
  }

  /**
   * Whether the model has been disposed.
   */
  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /**
   * Stop polling.
   */
  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this.jobs.dispose();
    this.resources.dispose();
    this.models.dispose();
    Signal.clearData(this);
  }

  private _emitChanged(): void {
    this._changed.emit(undefined);
  }

  private _settings: ServerConnection.ISettings;
  private _statusFilter: JobStatus | null = null;
  private _changed = new Signal<this, void>(this);
  private _isDisposed = false;
}

/**
 * Fetch the versions of every listed model (`GET models` lists names and
 * aliases only) and merge them in.
 */
async function loadVersions(
  list: IModelList,
  settings: ServerConnection.ISettings
): Promise<IModelList> {
  const models = await Promise.all(
    list.models.map(async model => {
      const detail = await requestAPI<unknown>(
        `models/${apiPath(model.name)}`,
        {
          settings
        }
      );
      return mergeVersions(model, detail);
    })
  );
  return { models };
}
